"""Imagined frames per second: a group of G rollouts stepped as one batch vs one rollout at a time.

The imagination server's Imagine action generates all G rollouts of a chunk index as one batch
(ImaginedRollouts(num_rollouts=G)); the alternative is G separate ImaginedRollouts(num_rollouts=1).
Both run the same model in the same process, from the same start (a calibrated camera, so action frames
are rendered too), for --chunks chunks each; the modes are timed alternately, --repeats times each after a
warm-up, and the median is reported. Random weights: the speed does not depend on them.

    python bench/imagination_throughput.py [--config tiny] [--image-size 64] [--group 8] [--chunks 4]
                                           [--num-steps 0] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import statistics
import time

import numpy as np
import torch

from prophrl_common.geometry import CameraCalibration
from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts
from prophrl_worldmodel.modeling_prophet import Prophet


def imagine(model: Prophet, start: ImaginationStart, chunks: np.ndarray, batched: bool, num_steps: int | None) -> int:
    """Run every rollout through all chunks (G, N, horizon, 7); returns the number of frames imagined."""
    g, n = chunks.shape[:2]
    if batched:
        groups = [(ImaginedRollouts(model, start, g, num_steps=num_steps, seed=0), slice(0, g))]
    else:
        groups = [(ImaginedRollouts(model, start, 1, num_steps=num_steps, seed=r), slice(r, r + 1)) for r in range(g)]
    frames = 0
    for i in range(n):
        for rollouts, rows in groups:
            clip = rollouts.step(chunks[rows, i])
            frames += clip.shape[0] * clip.shape[1]
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--group", type=int, default=8, help="rollouts per group (G)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per rollout")
    parser.add_argument("--num-steps", type=int, default=0, help="Euler steps per clip (0: the config's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_prophet_config(args.config, image_size=args.image_size)
    model = Prophet(config).eval()
    size = config.image_size
    rng = np.random.default_rng(0)
    look_down = np.array([[1, 0, 0, -0.5], [0, -1, 0, 0], [0, 0, -1, 1.5], [0, 0, 0, 1]], float)
    camera = CameraCalibration.from_camera_info([size, 0, size / 2, 0, size, size / 2, 0, 0, 1], look_down, size, size)
    start = ImaginationStart(rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8), "lift the red cube",
                             np.array([0.5, 0.0, 0.1, 1.0, 0.0, 0.0, 0.0]), 0.0, camera)
    chunks = (rng.standard_normal((args.group, args.chunks, config.action_horizon, 7)) * 0.01).astype(np.float32)
    chunks[..., 6] = 0.0
    num_steps = args.num_steps or None

    modes = (("batched (one group of G)", True), ("one rollout at a time", False))
    for _, batched in modes:
        imagine(model, start, chunks[:, :1], batched, num_steps)   # warm-up
    times = {label: [] for label, _ in modes}
    frames = {}
    for _ in range(args.repeats):   # interleaved, so load from other processes hits both modes alike
        for label, batched in modes:
            begin = time.perf_counter()
            frames[label] = imagine(model, start, chunks, batched, num_steps)
            times[label].append(time.perf_counter() - begin)
    rows = [(label, frames[label], statistics.median(times[label])) for label, _ in modes]

    steps = num_steps or config.num_inference_steps
    print(f"Prophet {config.name}: {size} px, {config.frames_per_clip} frames per clip of {config.action_horizon} "
          f"actions, {steps} Euler steps, action frames {'on' if config.use_action_frames else 'off'}; G={args.group}, "
          f"{args.chunks} chunks per rollout; CPU, {torch.get_num_threads()} torch thread(s); median of {args.repeats}")
    print(f"{'mode':<28} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'speed-up':>9}")
    base = rows[1][1] / rows[1][2]
    for label, frames, seconds in rows:
        print(f"{label:<28} {frames:>7} {seconds:>8.2f} {frames / seconds:>9.1f} {frames / seconds / base:>8.2f}x")


if __name__ == "__main__":
    main()
