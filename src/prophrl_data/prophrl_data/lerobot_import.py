"""LeRobot v3 dataset -> the training shards bags2dataset writes (`prophrl lerobot2dataset`).

Any LeRobot v3.0 dataset directory (recorded with LeRobot, downloaded, or exported by
``prophrl bags2dataset --lerobot``) becomes an OUT/index.json + OUT/shards/ directory that SFT, Prophet
pretraining / adaptation, the judge and RL read. The layout is read as LeRobot writes it: episodes from
every meta/episodes/chunk-*/file-*.parquet, each episode's frames from its data file
(``data/chunk_index``, ``data/file_index``) and its video file (``videos/<key>/chunk_index`` /
``file_index``) between ``from_timestamp`` and ``to_timestamp``, a frame at from_timestamp + its
timestamp (LeRobot's tolerance, 1e-4 s), tasks from meta/tasks.parquet; image features stored in the
parquet (dtype "image") work too.

Features are found by name (LeRobot's ``names``):
- joint positions: the robot config's joint names, end-effector pose: ee_x ee_y ee_z ee_qx ee_qy ee_qz ee_qw,
  both among the columns of the observation.* vector features (observation.state usually);
- actions: the ``action`` feature; its names give the action space (dx ... gripper: ee_delta_7d,
  ee0_dx ... ee1_gripper: ee_delta_14d, the robot's joint names: joint_position);
- frames: the dataset's one camera (observation.images.*), or the one named with ``camera``.
The instruction is the episode's task; success, episode id, task name, control period and camera
calibration come from this project's episode columns (lerobot_v3.EPISODE_COLUMNS) when present, else the
episode id is made from the index, the control period is 1 / fps, the calibration null, and success must
be given (``assume_success``: LeRobot datasets usually hold demonstrations, but that is the user's call).

A LeRobot dataset stores the action executed at each frame, not the chunk it came from: each shard's
action_chunks are (N, 1, action_dim) (the frame's action) with chunk_steps 0, and frame_times_ns are the
frames' timestamps. Everything the trainers read (frames, joint positions, ee pose, state, actions,
instruction, task, success, episode id, calibration) comes back exactly from a bags2dataset export made
with a lossless codec (``--video-codec libx264rgb``); with LeRobot's lossy default the frames are the video's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.chunks import ARM_ACTION_NAMES, EE_ACTION_NAMES, EE_POSE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import check_output_dir
from prophrl_common.robots import RobotConfig, load_robot_config
from prophrl_data import lerobot_v3 as fmt
from prophrl_data.samples import EpisodeSamples
from prophrl_data.shards import (DATASET_OUTPUT, DatasetSummary, episode_calibration,
                                 write_index, write_shard)

TIMESTAMP_TOLERANCE_S = 1e-4   # LeRobot's default tolerance between a frame's timestamp and the video's


def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / fmt.INFO_PATH).is_file()


class LeRobotDataset:
    """A LeRobot v3 dataset directory, read with pyarrow + PyAV (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / fmt.INFO_PATH
        try:
            self.info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.root}: not a LeRobot dataset (no {fmt.INFO_PATH})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{info_path}: cannot read: {exc}") from None
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise ConfigError(f"{self.root}: LeRobot codebase_version {version!r}; only v3.x is read (convert "
                              "older datasets with lerobot's convert_dataset_v21_to_v30)")
        try:
            self.fps = int(self.info["fps"])
            self.features: dict[str, dict] = dict(self.info["features"])
            self.data_path = str(self.info["data_path"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{info_path}: missing or malformed {exc}") from None
        self.video_path = self.info.get("video_path")
        self.episodes = self._read_episodes()
        self.tasks = self._read_tasks()
        self._data_files: dict[Path, dict[str, np.ndarray]] = {}

    def _read_parquet(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None

    def _read_episodes(self) -> list[dict]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise ConfigError(f"{self.root}: no meta/episodes/chunk-*/file-*.parquet")
        rows = [row for path in files for row in self._read_parquet(path).to_pylist()]
        rows.sort(key=lambda row: row["episode_index"])
        return rows

    def _read_tasks(self) -> dict[int, str]:
        table = self._read_parquet(self.root / fmt.TASKS_PATH).to_pydict()
        if "task_index" not in table or "task" not in table:
            raise ConfigError(f"{self.root / fmt.TASKS_PATH}: expected task_index and task columns")
        return dict(zip(table["task_index"], table["task"]))

    def names(self, key: str) -> list[str]:
        """A feature's per-value names (LeRobot gives a list, or a dict of lists); index names when absent."""
        feature = self.features[key]
        names = feature.get("names")
        size = int(np.prod(feature.get("shape") or [1]))
        if isinstance(names, dict):
            names = [name for group in names.values() for name in group]
        if not isinstance(names, list) or len(names) != size:
            return [f"{key}_{i}" for i in range(size)]
        return [str(name) for name in names]

    def camera_keys(self) -> list[str]:
        return [key for key, feature in self.features.items() if feature.get("dtype") in ("video", "image")]

    def episode_data(self, episode: dict) -> dict[str, np.ndarray]:
        """The data-file columns of one episode's frames, in frame order."""
        path = self.root / self.data_path.format(chunk_index=episode["data/chunk_index"],
                                                 file_index=episode["data/file_index"])
        if path not in self._data_files:
            self._data_files = {path: self._read_parquet(path).to_pydict()}  # one data file in memory at a time
        columns = self._data_files[path]
        rows = np.flatnonzero(np.asarray(columns["episode_index"]) == episode["episode_index"])
        rows = rows[np.argsort(np.asarray(columns["frame_index"])[rows], kind="stable")]
        if len(rows) != episode["length"]:
            raise ConfigError(f"{path}: episode {episode['episode_index']} has {len(rows)} frames, its metadata says "
                              f"{episode['length']}")
        return {name: [values[i] for i in rows] for name, values in columns.items()}

    def video_frames(self, episode: dict, key: str, timestamps: Sequence[float]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames of a video feature at the episode's frame timestamps."""
        import av

        path = self.root / str(self.video_path).format(video_key=key,
                                                       chunk_index=episode[f"videos/{key}/chunk_index"],
                                                       file_index=episode[f"videos/{key}/file_index"])
        start = float(episode[f"videos/{key}/from_timestamp"])
        wanted = [start + float(t) for t in timestamps]
        frames: list[np.ndarray] = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                container.seek(max(0, int((wanted[0] - 1.0) / stream.time_base)), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.time is None or frame.time < wanted[len(frames)] - TIMESTAMP_TOLERANCE_S:
                        continue
                    if abs(frame.time - wanted[len(frames)]) > TIMESTAMP_TOLERANCE_S:
                        raise ConfigError(f"{path}: no frame at {wanted[len(frames)]:.4f} s for episode "
                                          f"{episode['episode_index']} (next is at {frame.time:.4f} s)")
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == len(wanted):
                        break
        except (OSError, av.error.FFmpegError) as exc:
            raise ConfigError(f"{path}: cannot decode: {exc}") from None
        if len(frames) != len(wanted):
            raise ConfigError(f"{path}: the video ends after {len(frames)} of episode {episode['episode_index']}'s "
                              f"{len(wanted)} frames")
        return np.stack(frames)

    def image_frames(self, values: Sequence) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames of an image feature stored in the parquet ({bytes, path} each)."""
        import cv2

        frames = []
        for value in values:
            data = value.get("bytes") if isinstance(value, dict) else None
            if data is None and isinstance(value, dict) and value.get("path"):
                data = (self.root / value["path"]).read_bytes()
            image = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
            if image is None:
                raise ConfigError(f"{self.root}: an image frame cannot be decoded")
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return np.stack(frames)


def _column_lookup(dataset: LeRobotDataset) -> dict[str, tuple[str, int]]:
    """name -> (feature, position) over the observation.* vector features."""
    lookup: dict[str, tuple[str, int]] = {}
    for key, feature in dataset.features.items():
        if key.startswith("observation.") and feature.get("dtype") in ("float32", "float64"):
            for position, name in enumerate(dataset.names(key)):
                lookup.setdefault(name, (key, position))
    return lookup


def _action_space(names: list[str], robot: RobotConfig) -> str:
    for space, space_names in EE_ACTION_NAMES.items():
        if names == list(space_names):
            return space
    if names == list(robot.joint_names):
        return "joint_position"
    raise ConfigError(f"action names {names} are none of the known action spaces: ee_delta_7d {list(ARM_ACTION_NAMES)}, "
                      f"ee_delta_14d (ee0_dx ... ee1_gripper) or joint_position {list(robot.joint_names)}")


def _pick(data: dict, lookup: dict, names: Sequence[str], what: str, dataset: LeRobotDataset) -> np.ndarray:
    missing = [name for name in names if name not in lookup]
    if missing:
        raise ConfigError(f"{dataset.root}: no observation feature names the {what} {missing} (names found: "
                          f"{sorted(lookup)[:20]})")
    return np.stack([np.asarray(data[lookup[name][0]], np.float64)[:, lookup[name][1]] for name in names],
                    axis=1).astype(np.float32)


def read_episodes(dataset: LeRobotDataset, robot: RobotConfig, camera: str | None = None,
                  assume_success: bool = False) -> Iterator[EpisodeSamples]:
    """The dataset's episodes as EpisodeSamples (one at a time), mapped as the module docstring says."""
    cameras = dataset.camera_keys()
    if camera is None:
        if len(cameras) != 1:
            raise ConfigError(f"{dataset.root}: {len(cameras)} camera features {cameras}; name one with --camera")
        camera = cameras[0]
    elif camera not in cameras:
        raise ConfigError(f"{dataset.root}: no camera feature {camera!r}; it has {cameras}")
    if "action" not in dataset.features:
        raise ConfigError(f"{dataset.root}: no 'action' feature")
    action_names = dataset.names("action")
    action_space = _action_space(action_names, robot)
    lookup = _column_lookup(dataset)
    for episode in dataset.episodes:
        index = int(episode["episode_index"])
        if "success" in episode and episode["success"] is not None:
            success = bool(episode["success"])
        elif assume_success:
            success = True
        else:
            raise ConfigError(f"{dataset.root}: episode {index} records no success; pass --assume-success to take "
                              "every episode as a successful demonstration")
        data = dataset.episode_data(episode)
        timestamps = np.asarray(data["timestamp"], np.float64).reshape(-1)
        if dataset.features[camera]["dtype"] == "video":
            frames = dataset.video_frames(episode, camera, timestamps)
        else:
            frames = dataset.image_frames(data[camera])
        actions = np.asarray(data["action"], np.float32).reshape(len(timestamps), len(action_names))
        task_indices = set(np.asarray(data["task_index"]).reshape(-1).tolist())
        instruction = dataset.tasks.get(min(task_indices), "") if task_indices else ""
        camera_entry = json.loads(episode["camera_calibration"]) if episode.get("camera_calibration") else None
        episode_calibration({"camera": camera_entry, "episode_id": str(index)})  # ConfigError when malformed
        yield EpisodeSamples(
            bag_path=dataset.root, episode_id=str(episode.get("episode_id") or f"{dataset.root.name}_{index:06d}"),
            instruction=instruction, task=str(episode.get("task_name") or ""), success=success, recovered=False,
            frames=frames, frame_times_ns=np.round(timestamps * 1e9).astype(np.int64),
            joint_positions=_pick(data, lookup, robot.joint_names, "joint positions", dataset),
            ee_pose=_pick(data, lookup, EE_POSE_NAMES, "end-effector pose", dataset),
            action_chunks=actions[:, None, :], chunk_steps=np.zeros(len(actions), np.int32),
            action_space=action_space,
            control_period_s=float(episode.get("control_period_s") or 1.0 / dataset.fps),
            skipped_frames=0, camera=camera_entry)


def lerobot2dataset(lerobot_dir: str | Path, out_dir: str | Path, robot: RobotConfig | str | None = None, *,
                    camera: str | None = None, assume_success: bool = False, overwrite: bool = False,
                    show_progress: bool = False) -> DatasetSummary:
    """Convert a LeRobot v3 dataset into training shards (bags2dataset's layout); all or nothing.

    robot defaults to the dataset's robot_type (a config name). Raises ConfigError for anything unusable,
    naming it; out_dir is checked first as bags2dataset checks it.
    """
    from tqdm import tqdm

    lerobot_dir, out_dir = Path(lerobot_dir), Path(out_dir)
    check_output_dir(out_dir, DATASET_OUTPUT, overwrite=overwrite, inputs=[lerobot_dir])
    dataset = LeRobotDataset(lerobot_dir)
    if robot is None:
        robot = dataset.info.get("robot_type") or ""
        if not robot:
            raise ConfigError(f"{lerobot_dir}: info.json names no robot_type; pass --robot")
    robot = robot if isinstance(robot, RobotConfig) else load_robot_config(robot)
    entries: list[dict] = []
    reference: EpisodeSamples | None = None
    with atomic_directory(out_dir, drop=DATASET_OUTPUT.names) as staging:
        (staging / "shards").mkdir()
        for episode in tqdm(read_episodes(dataset, robot, camera, assume_success), total=len(dataset.episodes),
                            desc="lerobot2dataset", unit="episode", disable=not show_progress):
            if reference is not None and (episode.frames.shape[1:] != reference.frames.shape[1:]
                                          or episode.action_chunks.shape[1:] != reference.action_chunks.shape[1:]):
                raise ConfigError(f"{lerobot_dir}: episode {episode.episode_id} has frames {episode.frames.shape[1:]} "
                                  f"and actions {episode.action_chunks.shape[2:]}, the first episode "
                                  f"{reference.frames.shape[1:]} and {reference.action_chunks.shape[2:]}")
            reference = reference or episode
            shard = f"shards/episode_{len(entries):06d}.npz"
            write_shard(staging / shard, episode)
            entries.append({"shard": shard, "bag": f"{lerobot_dir}#episode_{len(entries)}",
                            "episode_id": episode.episode_id, "instruction": episode.instruction, "task": episode.task,
                            "success": episode.success, "num_samples": len(episode), "skipped_frames": 0,
                            "recovered": False, "camera": episode.camera})
        if reference is None:
            raise ConfigError(f"{lerobot_dir}: no episodes")
        write_index(staging / "index.json", robot, None, reference, entries,
                    source={"lerobot": str(lerobot_dir), "fps": dataset.fps})
    return DatasetSummary(out_dir, len(entries), sum(e["num_samples"] for e in entries), None)
