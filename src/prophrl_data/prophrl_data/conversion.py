"""rosbag2 episodes -> a training-shard dataset (see prophrl_data.shards), and a LeRobot v3 export.

Each bag is aligned by prophrl_data.alignment; every chunk of the whole dataset must share action_space,
horizon and action_dim, and every frame one image size; anything else is a :class:`BagError` naming the bag.

The LeRobot v3.0 export (``prophrl_data.lerobot_v3``, which owns the format) has
``observation.state`` = the joint positions + ee pose, ``action`` = the chunk step due at the frame, the
task = the instruction, ``observation.images.<camera>`` named after the image topic's first segment, and
each episode's success, id, task name, control period and calibration as extra episode columns, so
``prophrl_data.lerobot_import`` turns it back into the same samples.
LeRobot frame timestamps are frame_index / fps, so each episode is first put on that frame grid
(:func:`on_rate_grid`: a real camera's jittery timestamps map one frame to each grid point; a camera at another
rate has frames repeated or skipped, with a warning).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.chunks import EE_POSE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import check_output_dir
from prophrl_common.robots import RobotConfig, load_robot_config
from prophrl_common.bag_error import BagError
from prophrl_data.bag_reader import discover_bags
from prophrl_data.alignment import load_episode, on_rate_grid
from prophrl_data.samples import DatasetTopics, EpisodeSamples
from prophrl_data.lerobot_v3 import DEFAULT_VIDEO_CODEC, LeRobotV3Writer
from prophrl_data.shards import (DATASET_OUTPUT, DatasetSummary, action_names, write_index,
                                 write_shard)


def bags2dataset(bags: Iterable[str | Path], out_dir: str | Path, robot: RobotConfig | str, *,
                 topics: DatasetTopics | None = None, lerobot: bool = False, fps: int | None = None,
                 video_codec: str = DEFAULT_VIDEO_CODEC, overwrite: bool = False,
                 show_progress: bool = False) -> DatasetSummary:
    """Convert rosbag2 episodes into training shards (and a LeRobot v3 dataset); all or nothing.

    ``bags``: bag directories / .mcap files, or directories of bags. ``fps`` (LeRobot only) defaults
    to the first episode's camera rate. Raises BagError naming the bag for malformed input, ConfigError
    when ``out_dir`` cannot take the output (prophrl_common.outputs: it exists and ``overwrite`` is not
    given or it is not a previous bags2dataset output, it is or holds one of the bags, ...).
    """
    from tqdm import tqdm

    bags = list(bags)
    for path in bags:
        if (Path(path) / "meta" / "info.json").is_file():
            raise ConfigError(f"{path} is a LeRobot dataset, not a bag: convert it with prophrl lerobot2dataset")
    check_output_dir(out_dir, DATASET_OUTPUT, overwrite=overwrite, inputs=bags)
    robot = robot if isinstance(robot, RobotConfig) else load_robot_config(robot)
    topics = topics or DatasetTopics.for_robot(robot)
    bag_paths = discover_bags(bags)
    if not bag_paths:
        raise ValueError("no bags given")
    out_dir = Path(out_dir)
    index_episodes: list[dict] = []
    reference: EpisodeSamples | None = None
    writer: LeRobotV3Writer | None = None
    with atomic_directory(out_dir, drop=DATASET_OUTPUT.names) as staging:
        (staging / "shards").mkdir()
        try:
            for bag_path in tqdm(bag_paths, desc="bags2dataset", unit="bag", disable=not show_progress):
                episode = load_episode(bag_path, robot, topics)
                if reference is None:
                    reference = episode
                else:
                    _check_compatible(episode, reference)
                shard = f"shards/episode_{len(index_episodes):06d}.npz"
                write_shard(staging / shard, episode)
                index_episodes.append({
                    "shard": shard, "bag": str(bag_path), "episode_id": episode.episode_id,
                    "instruction": episode.instruction, "task": episode.task, "success": episode.success,
                    "num_samples": len(episode), "skipped_frames": episode.skipped_frames,
                    "recovered": episode.recovered, "camera": episode.camera,
                })
                if lerobot:
                    if writer is None:
                        writer = LeRobotV3Writer(
                            staging / "lerobot", fps=fps or _dataset_fps(episode), robot_type=robot.name,
                            camera_name=topics.camera_name, image_shape=episode.frames.shape[1:],
                            state_names=[*robot.joint_names, *EE_POSE_NAMES],
                            action_names=action_names(episode.action_space, episode.action_chunks.shape[2], robot),
                            video_codec=video_codec)
                    aligned = _at_dataset_rate(episode, writer.fps)
                    writer.add_episode(aligned.frames, aligned.state, aligned.actions, aligned.instruction,
                                       lerobot_episode_columns(index_episodes[-1], aligned.control_period_s))
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        write_index(staging / "index.json", robot, topics, reference, index_episodes)
    samples = sum(e["num_samples"] for e in index_episodes)
    return DatasetSummary(out_dir, len(index_episodes), samples, out_dir / "lerobot" if lerobot else None)


def lerobot_episode_columns(entry: dict, control_period_s: float) -> dict:
    """This project's episode columns in a LeRobot export (lerobot_v3.EPISODE_COLUMNS) from an index entry."""
    return {"success": bool(entry["success"]), "episode_id": str(entry["episode_id"]), "task_name": str(entry["task"]),
            "control_period_s": float(control_period_s), "camera_calibration": json.dumps(entry.get("camera"))}


def _check_compatible(episode: EpisodeSamples, reference: EpisodeSamples) -> None:
    for what, mine, theirs in (
        ("action_space", episode.action_space, reference.action_space),
        ("action chunk (horizon, action_dim)", episode.action_chunks.shape[1:], reference.action_chunks.shape[1:]),
        ("image shape", episode.frames.shape[1:], reference.frames.shape[1:]),
    ):
        if mine != theirs:
            raise BagError(episode.bag_path, f"{what} is {mine}, but {theirs} in the first bag {reference.bag_path}")


def _dataset_fps(episode: EpisodeSamples) -> int:
    rate = episode.camera_rate_hz or 1.0 / episode.control_period_s
    return max(1, round(rate))


def _at_dataset_rate(episode: EpisodeSamples, fps: int) -> EpisodeSamples:
    """The episode on the LeRobot dataset's frame grid; a warning when that repeats or skips frames."""
    aligned, changed = on_rate_grid(episode, fps)
    if changed:
        warnings.warn(f"bag {episode.bag_path}: camera at {episode.camera_rate_hz:.1f} Hz (median), the LeRobot"
                      f" dataset at {fps} fps: {changed} of {len(aligned)} frames repeated or skipped to put it on"
                      " the dataset's frame grid", stacklevel=2)
    return aligned
