"""Recorder throughput: N 128x128 rgb8 images + N ActionChunks into a rosbag2 MCAP bag.

1. writer: the recorder's writer-thread path alone (prophrl_data.bag_writer.BagWriter, CDR from rclpy's
   serialize_message), open -> N images + N chunks -> close (summary, footer, metadata.yaml, fsync):
   wall time, and the CPU time per message (process time, less sensitive to a busy machine), for the
   first bag of the process and the best of --writer-repeats (warm: allocations and code paths reused);
2. node: recorder_node in its own process over DDS (loopback, reliable; the default
   subscription_depth 1000 holds the whole burst): START, N images + N chunks published as fast as the
   transport takes them, then SUCCESS once all 2N are in the bag file (read while it is written).
   Reported: the span of the recorder's receive times (first to last message; a burst that loses a
   sample waits for DDS's resend, which shows as a span of seconds), the recorder process's CPU time
   per message from START to the closed bag (callbacks + writer thread; what bounds its sustained
   rate), and the time from SUCCESS to the closed bag's path on ~/last_bag.

    python bench/recorder_throughput.py [--count 1000] [--size 128] [--writer-repeats 5]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import String

from prophrl_common.bag_error import BagError
from prophrl_data.bag_format import cdr_header_stamp_ns
from prophrl_data.bag_reader import open_bag
from prophrl_data.bag_writer import BagWriter
from prophrl_common.chunks import array_to_chunk
from prophrl_common.images import numpy_to_image
from prophrl_common.startup import startup_timeout_s
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk, EpisodeEvent

IMAGE_TOPIC, CHUNK_TOPIC = "/camera/image_raw", "/prophrl/action_chunk"


def make_messages(count: int, size: int):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    actions = rng.normal(size=(20, 7)).astype(np.float32)
    images = [numpy_to_image(pixels, "rgb8", stamp=i * 0.05) for i in range(count)]
    chunks = [array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=i) for i in range(count)]
    return images, chunks


def bench_writer(images, chunks, workdir: Path) -> tuple[float, float]:
    """(wall s, CPU s) of writing the bag."""
    serialized = [(serialize_message(image), serialize_message(chunk))
                  for image, chunk in zip(images, chunks, strict=True)]
    if not (workdir / "warm_up").exists():
        BagWriter(workdir / "warm_up", {}).close()  # the typestore is built once per process, not per bag
    shutil.rmtree(workdir / "writer_bag", ignore_errors=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    with BagWriter(workdir / "writer_bag", {"instruction": "bench"}) as writer:
        writer.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image")
        writer.add_topic(CHUNK_TOPIC, "prophrl_msgs/msg/ActionChunk")
        for image_cdr, chunk_cdr in serialized:
            now = time.time_ns()
            writer.write(IMAGE_TOPIC, image_cdr, now, cdr_header_stamp_ns(image_cdr))
            writer.write(CHUNK_TOPIC, chunk_cdr, now, cdr_header_stamp_ns(chunk_cdr))
    return time.perf_counter() - start, time.process_time() - cpu_start


def publish_all(publisher, msg) -> None:
    while True:
        try:
            publisher.publish(msg)
            return
        except RCLError:  # back-pressure from the reliable reader (see DESIGN.md): let it catch up
            time.sleep(0.0005)


def recorded_count(bag_path: Path) -> int:
    try:
        return open_bag(bag_path).message_count
    except BagError:  # nothing flushed yet
        return 0


@dataclasses.dataclass
class NodeResult:
    publish_s: float  # publisher side, all 2N messages
    receive_s: float  # recorder side: first to last receive time stamped in the bag (incl. DDS resends)
    close_s: float  # SUCCESS sent -> closed bag's path received
    cpu_s: float  # the recorder process's CPU time (user + system) from START to the closed bag
    counts: dict[str, int]


def bench_node(images, chunks, workdir: Path) -> NodeResult:
    bag_dir = workdir / "node_bags"
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    rclpy.init()
    node = Node("recorder_bench")
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
    chunk_pub = node.create_publisher(ActionChunk, CHUNK_TOPIC, reliable)
    episode_pub = node.create_publisher(EpisodeEvent, "/prophrl/episode", reliable)
    closed = []
    node.create_subscription(String, "/recorder_node/last_bag", lambda msg: closed.append(msg.data), latched)
    argv = python_module_argv("prophrl_robot.recorder_node", "-p", f"output_dir:={bag_dir}",
                              "-p", f"topics:=['{IMAGE_TOPIC}', '{CHUNK_TOPIC}']")
    try:
        with node_process(argv) as recorder:
            ready = lambda: all(p.get_subscription_count() for p in (image_pub, chunk_pub, episode_pub))
            if not spin_until(node, ready, startup_timeout_s()):
                raise RuntimeError(f"recorder did not subscribe:\n{recorder.output()}")
            process = psutil.Process(recorder.proc.pid)
            cpu_before = sum(process.cpu_times()[:2])
            episode_pub.publish(EpisodeEvent(event=EpisodeEvent.START, episode_id="bench"))
            if not spin_until(node, lambda: (bag_dir / "bench").is_dir(), 10):
                raise RuntimeError(f"recorder did not open the bag:\n{recorder.output()}")
            publish_start = time.perf_counter()
            for image, chunk in zip(images, chunks, strict=True):
                publish_all(image_pub, image)
                publish_all(chunk_pub, chunk)
            publish_s = time.perf_counter() - publish_start
            # a reliable burst can lose samples on loopback that DDS resends only at its next heartbeat:
            # close the episode once the recorder has everything on disk (read while it is being written)
            everything_on_disk = lambda: recorded_count(bag_dir / "bench") == 2 * len(images)
            if not spin_until(node, everything_on_disk, 30):
                raise RuntimeError(f"only {recorded_count(bag_dir / 'bench')} messages were recorded")
            success_sent = time.perf_counter()
            episode_pub.publish(EpisodeEvent(event=EpisodeEvent.SUCCESS, episode_id="bench"))
            if not spin_until(node, lambda: closed, 60):
                raise RuntimeError(f"bag was not closed:\n{recorder.output()}")
            close_s = time.perf_counter() - success_sent
            cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    finally:
        node.destroy_node()
        rclpy.shutdown()
    bag = open_bag(closed[0])
    receive_times = [m.log_time_ns for m in bag.messages([IMAGE_TOPIC, CHUNK_TOPIC])]
    return NodeResult(publish_s, (max(receive_times) - min(receive_times)) / 1e9, close_s, cpu_s,
                      {topic: info.message_count for topic, info in bag.topics.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--writer-repeats", type=int, default=5)
    args = parser.parse_args()
    isolate_ros_domain()
    images, chunks = make_messages(args.count, args.size)
    with tempfile.TemporaryDirectory(prefix="recorder-bench-") as workdir:
        runs = [bench_writer(images, chunks, Path(workdir)) for _ in range(max(1, args.writer_repeats))]
        (writer_s, cpu_s), best_cpu_s = runs[0], min(cpu for _, cpu in runs)
        print(f"writer: {args.count} {args.size}x{args.size} images + {args.count} chunks written in {writer_s:.3f} s"
              f" ({2 * args.count / writer_s:.0f} msg/s; CPU {1e6 * cpu_s / (2 * args.count):.0f} us per message;"
              f" warm, best of {len(runs)}: {1e6 * best_cpu_s / (2 * args.count):.0f} us)")
        result = bench_node(images, chunks, Path(workdir))
        total = 2 * args.count
        print(f"recorder_node over DDS: {args.count} images + {args.count} chunks received in {result.receive_s:.3f} s"
              f" ({total / result.receive_s:.0f} msg/s; publisher side {result.publish_s:.3f} s; recorder CPU"
              f" {1e6 * result.cpu_s / total:.0f} us per message), bag closed"
              f" {result.close_s:.3f} s after SUCCESS; in the bag: {result.counts.get(IMAGE_TOPIC, 0)} images,"
              f" {result.counts.get(CHUNK_TOPIC, 0)} chunks")


if __name__ == "__main__":
    main()
