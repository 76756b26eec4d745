"""The data verbs: `prophrl bags2dataset` (rosbag2 -> training shards, + LeRobot v3) and `prophrl lerobot2dataset`
(a LeRobot v3 dataset -> training shards)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prophrl_common.cli_errors import run_reporting_errors
from prophrl_common.robots import load_robot_config
from prophrl_data.samples import DatasetTopics
from prophrl_data.conversion import bags2dataset
from prophrl_data.lerobot_import import lerobot2dataset
from prophrl_data.lerobot_v3 import DEFAULT_VIDEO_CODEC, VIDEO_ENCODERS


def main_bags2dataset(argv: Sequence[str] | None = None) -> int:
    """`prophrl bags2dataset`: rosbag2 episodes -> training shards (+ LeRobot v3). Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="prophrl bags2dataset",
        description="Convert rosbag2 episode bags into aligned training shards (and a LeRobot v3 dataset).")
    parser.add_argument("--bags", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="bag directories or .mcap files, or directories holding bags")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    parser.add_argument("--robot", required=True, help="robot config name (config/robots) or YAML path")
    parser.add_argument("--lerobot", action="store_true", help="also export a LeRobot v3 dataset to OUT/lerobot")
    parser.add_argument("--image-topic", default=DatasetTopics.image)
    parser.add_argument("--fps", type=int, help="LeRobot fps (default: the first episode's camera rate)")
    parser.add_argument("--video-codec", default=DEFAULT_VIDEO_CODEC, choices=sorted(VIDEO_ENCODERS),
                        help="encoder of the LeRobot videos (libx264rgb: lossless)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is a previous bags2dataset output (never anything else, never a bag)")
    args = parser.parse_args(argv)
    return run_reporting_errors("prophrl bags2dataset", lambda: _bags2dataset_command(args), also=(ValueError,))


def _bags2dataset_command(args: argparse.Namespace) -> int:
    robot = load_robot_config(args.robot)
    summary = bags2dataset(args.bags, args.out, robot, topics=DatasetTopics.for_robot(robot, args.image_topic),
                           lerobot=args.lerobot, fps=args.fps, video_codec=args.video_codec,
                           overwrite=args.overwrite, show_progress=True)
    print(f"wrote {summary.samples} samples from {summary.episodes} episodes to {summary.out_dir}"
          + (f" (LeRobot v3: {summary.lerobot_dir})" if summary.lerobot_dir else ""))
    return 0


def main_lerobot2dataset(argv: Sequence[str] | None = None) -> int:
    """`prophrl lerobot2dataset`: a LeRobot v3 dataset -> training shards. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="prophrl lerobot2dataset",
        description="Convert a LeRobot v3 dataset directory into training shards (what bags2dataset writes).")
    parser.add_argument("--dataset", required=True, type=Path, help="LeRobot v3 dataset directory (meta/info.json)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    parser.add_argument("--robot", help="robot config name or YAML path (default: the dataset's robot_type)")
    parser.add_argument("--camera", help="camera feature (default: the dataset's only observation.images.*)")
    parser.add_argument("--assume-success", action="store_true",
                        help="episodes without a success column count as successful demonstrations")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is a previous bags2dataset / lerobot2dataset output")
    args = parser.parse_args(argv)

    def convert() -> int:
        summary = lerobot2dataset(args.dataset, args.out, args.robot, camera=args.camera,
                                  assume_success=args.assume_success, overwrite=args.overwrite, show_progress=True)
        print(f"wrote {summary.samples} samples from {summary.episodes} episodes to {summary.out_dir}")
        return 0

    return run_reporting_errors("prophrl lerobot2dataset", convert)

