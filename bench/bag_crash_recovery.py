"""Crash recovery of rosbag2 MCAP bags: what a SIGKILLed writer leaves readable, and what a cut file keeps.

1. killed writer: a child process writes 128x128 rgb8 images at --rate Hz through prophrl_data.bag_writer.BagWriter
   (default chunk size and flush period, as the recorder uses it) and reports each message once write()
   returned; it is SIGKILLed after --seconds. Per trial: messages acknowledged, messages recovered (checked to
   be a gap-free prefix), the loss in messages and in ms of recording, and the time open_bag plus reading every
   message back takes.
2. cut files: a closed bag of --count images (chunks of 64 KiB) cut at 10 %, 20 %, ... 90 % of its bytes
   (metadata.yaml kept): the share of its messages that open_bag recovers from each cut.

    python bench/bag_crash_recovery.py [--trials 5] [--rate 100] [--seconds 2] [--count 400]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message

from prophrl_data.bag_reader import open_bag
from prophrl_data.bag_writer import BagWriter
from prophrl_common.images import numpy_to_image

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rclpy.serialization import serialize_message
    from prophrl_data.bag_writer import BagWriter
    from prophrl_common.images import numpy_to_image
    path, rate = sys.argv[1], float(sys.argv[2])
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    writer = BagWriter(path, {"episode_id": "killed"})
    writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
    start = time.monotonic()
    for i in range(10**9):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        cdr = serialize_message(numpy_to_image(pixels, "rgb8", stamp=i / rate, frame_id=str(i)))
        writer.write("/camera/image_raw", cdr, 10**9 + i)
        print(i, flush=True)
""")


def killed_writer_trial(path: Path, rate: float, seconds: float) -> dict:
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rate)], stdout=subprocess.PIPE, text=True)
    acknowledged, deadline = 0, None
    try:
        for line in child.stdout:
            acknowledged = int(line) + 1
            deadline = deadline or time.monotonic() + seconds  # counted from the first message
            if time.monotonic() >= deadline:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    begin = time.perf_counter()
    bag = open_bag(path)
    indices = [int(message.log_time_ns - 10**9) for message in bag.messages()]
    read_s = time.perf_counter() - begin
    assert indices == list(range(len(indices))), "recovered messages are not a gap-free prefix"
    lost = acknowledged - len(indices)
    return {"acknowledged": acknowledged, "recovered": len(indices), "lost": lost, "lost_ms": 1000 * lost / rate,
            "read_s": read_s, "recovered_flag": bag.recovered}


def cut_file_shares(workdir: Path, count: int) -> list[tuple[int, float]]:
    pixels = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    source = workdir / "closed"
    with BagWriter(source, {"episode_id": "cut"}, chunk_size_bytes=64 * 1024) as writer:
        writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        for i in range(count):
            writer.write("/camera/image_raw", serialize_message(numpy_to_image(pixels, "rgb8", stamp=i * 0.05)),
                         10**9 + i)
    data = (source / "closed_0.mcap").read_bytes()
    shares = []
    for percent in range(10, 100, 10):
        cut = workdir / f"cut{percent}"
        shutil.copytree(source, cut)
        (cut / "closed_0.mcap").write_bytes(data[:len(data) * percent // 100])
        shares.append((percent, sum(1 for _ in open_bag(cut).messages()) / count))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rate", type=float, default=100.0, help="images per second the killed writer writes")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long it writes before the SIGKILL")
    parser.add_argument("--count", type=int, default=400, help="images in the bag that is cut")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bag-crash-bench-") as workdir:
        trials = [killed_writer_trial(Path(workdir) / f"killed{i}", args.rate, args.seconds) for i in range(args.trials)]
        for number, trial in enumerate(trials):
            print(f"killed writer trial {number}: {trial['acknowledged']} acknowledged, {trial['recovered']} recovered"
                  f" (gap-free prefix, recovered={trial['recovered_flag']}), lost {trial['lost']} ="
                  f" {trial['lost_ms']:.0f} ms of recording; open + read back {trial['read_s'] * 1000:.0f} ms")
        print(f"killed writer, {args.trials} trials at {args.rate:g} Hz: lost {statistics.mean(t['lost_ms'] for t in trials):.0f}"
              f" ms on average (max {max(t['lost_ms'] for t in trials):.0f} ms); open + read back"
              f" {statistics.mean(t['read_s'] for t in trials) * 1000:.0f} ms on average")
        shares = cut_file_shares(Path(workdir), args.count)
        print("cut closed bag (64 KiB chunks): " + ", ".join(f"{p} % of the bytes -> {share:.1%} of the messages"
                                                             for p, share in shares))


if __name__ == "__main__":
    main()
