"""The training-shard dataset format: a directory of one index.json and one .npz shard per episode, its
writer pieces, its one reader (:class:`EpisodeDataset`) and the one episode record it yields
(:class:`ShardEpisode`, which every consumer of episodes uses).

A dataset (written into a temporary sibling directory and renamed into place only when everything
succeeded, so an error leaves no output directory behind; an existing output directory is replaced
only on request and only when it is a previous bags2dataset output, see prophrl_common.outputs)::

    OUT/index.json                   dataset + per-episode metadata (no pickle anywhere); each episode's
                                     "camera" is {"k": 9 floats, "width", "height", "world_to_camera":
                                     16 floats row-major} or null (see episode_calibration)
    OUT/shards/episode_000000.npz    frames, frame_times_ns, joint_positions, ee_pose, state,
                                     action_chunks, chunk_steps, actions (np.load(allow_pickle=False))
    OUT/lerobot/                     with lerobot=True: a LeRobot v3.0 dataset
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from prophrl_common.chunks import EE_ACTION_NAMES, EE_POSE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_frames
from prophrl_common.geometry import CameraCalibration
from prophrl_common.outputs import OutputKind
from prophrl_common.robots import RobotConfig
from prophrl_data.samples import DatasetTopics, EpisodeSamples


SHARD_FORMAT = "prophrl-samples-v1"
# The arrays of every shard (write_shard), one row per sample.
SHARD_ARRAYS = ("frames", "frame_times_ns", "joint_positions", "ee_pose", "state", "action_chunks", "chunk_steps",
                "actions")


# What bags2dataset writes into its output directory.
DATASET_OUTPUT = OutputKind("bags2dataset output", frozenset({"index.json", "shards", "lerobot"}))


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    out_dir: Path
    episodes: int
    samples: int
    lerobot_dir: Path | None


def action_names(action_space: str, action_dim: int, robot: RobotConfig) -> list[str]:
    if action_space in EE_ACTION_NAMES:
        return list(EE_ACTION_NAMES[action_space])
    if action_space == "joint_position" and action_dim == robot.num_joints:
        return list(robot.joint_names)
    return [f"action_{i}" for i in range(action_dim)]


def write_shard(path: Path, episode: EpisodeSamples) -> None:
    with path.open("wb") as f:
        np.savez(f, frames=episode.frames, frame_times_ns=episode.frame_times_ns,
                 joint_positions=episode.joint_positions, ee_pose=episode.ee_pose, state=episode.state,
                 action_chunks=episode.action_chunks, chunk_steps=episode.chunk_steps, actions=episode.actions)


def write_index(path: Path, robot: RobotConfig, topics: DatasetTopics | None, reference: EpisodeSamples,
                episodes: list[dict], source: dict | None = None) -> None:
    """OUT/index.json: the dataset's metadata (from the first episode) and one entry per episode; topics are
    the bag topics read (None for other sources, which `source` describes)."""
    horizon, action_dim = reference.action_chunks.shape[1:]
    path.write_text(json.dumps({
        "format": SHARD_FORMAT,
        "robot": robot.name,
        "joint_names": list(robot.joint_names),
        "state_names": [*robot.joint_names, *EE_POSE_NAMES],
        "action_space": reference.action_space,
        "action_names": action_names(reference.action_space, action_dim, robot),
        "horizon": int(horizon),
        "action_dim": int(action_dim),
        "control_period_s": reference.control_period_s,
        "image_shape": list(reference.frames.shape[1:]),
        "topics": dataclasses.asdict(topics) if topics is not None else None,
        **({"source": source} if source else {}),
        "num_samples": sum(e["num_samples"] for e in episodes),
        "episodes": episodes,
    }, indent=2))


def read_dataset_index(dataset_dir: str | Path, action_space: str | None = None, needed_by: str = "") -> dict:
    """The index.json of a bags2dataset directory, checked: readable, this shard format, and (when given)
    the action space `needed_by` (e.g. "SFT") requires. One ConfigError naming the problem otherwise."""
    dataset_dir = Path(dataset_dir)
    index_path = dataset_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{dataset_dir}: not a bags2dataset output (cannot read index.json: {exc})") from None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise ConfigError(f"{index_path}: format {index.get('format') if isinstance(index, dict) else None!r}, "
                          f"expected {SHARD_FORMAT!r}")
    if action_space is not None and index.get("action_space") != action_space:
        raise ConfigError(f"{index_path}: {needed_by or 'this use'} needs {action_space} actions, the dataset has "
                          f"{index.get('action_space')!r}")
    return index


def episodes_with_known_outcome(index: dict, dataset_dir: str | Path, needed_by: str) -> list[tuple[int, dict]]:
    """(position, entry) of the index's episodes whose success is known, for training on outcomes
    (`needed_by`, e.g. "SFT"); one warning names those left out (success null: see episode_success)."""
    episodes = list(enumerate(index.get("episodes", [])))
    unknown = [entry.get("episode_id") or entry.get("shard") or str(i) for i, entry in episodes
               if entry.get("success") is None]
    if unknown:
        warnings.warn(f"{dataset_dir}: {needed_by} leaves out {len(unknown)} episode(s) whose outcome is unknown"
                      f" (recovered bags whose end did not survive): {', '.join(map(str, unknown))}", stacklevel=2)
    return [(i, entry) for i, entry in episodes if entry.get("success") is not None]


def episode_calibration(entry: dict) -> CameraCalibration | None:
    """The CameraCalibration of an index.json episode entry, or None when it has no (or a null) "camera".

    Raises ConfigError for a malformed entry.
    """
    camera = entry.get("camera") if isinstance(entry, dict) else None
    if camera is None:
        return None
    where = f"episode {entry.get('episode_id') or entry.get('shard') or '?'}"
    try:
        return CameraCalibration.from_camera_info(camera["k"], np.asarray(camera["world_to_camera"], np.float64)
                                                  .reshape(4, 4), int(camera["width"]), int(camera["height"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: malformed camera entry ({type(exc).__name__}: {exc}); expected "
                          "{'k': 9 floats, 'width': int, 'height': int, 'world_to_camera': 16 floats}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _checked_arrays(shard: Path, arrays: dict[str, np.ndarray], action_dim: int | None) -> dict[str, np.ndarray]:
    """The arrays read from `shard`, checked against the format: one row per sample in every array, frames
    (N, H, W, 3) uint8, ee_pose (N, 7) and actions (N, action_dim), ee_pose and actions finite."""
    rows = {name: array.shape[0] if array.ndim else None for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise ConfigError(f"{shard}: the arrays must have one row per sample, got rows {rows}")
    n = next(iter(rows.values()), None)
    frames, ee_pose, actions = arrays.get("frames"), arrays.get("ee_pose"), arrays.get("actions")
    if frames is not None and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise ConfigError(f"{shard}: frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if ee_pose is not None and ee_pose.shape != (n, 7):
        raise ConfigError(f"{shard}: ee_pose must be ({n}, 7) for {n} samples, got {ee_pose.shape}")
    if actions is not None and (actions.ndim != 2 or action_dim is not None and actions.shape[1] != action_dim):
        raise ConfigError(f"{shard}: actions must be ({n}, {action_dim or 'action_dim'}) for {n} samples, "
                          f"got {actions.shape}")
    for name, array in (("ee_pose", ee_pose), ("actions", actions)):
        if array is not None and (array.dtype.kind not in "fiu" or not np.isfinite(array).all()):
            raise ConfigError(f"{shard}: {name} must be finite numbers, got {array.dtype} with NaN / inf or "
                              "non-numeric values")
    return arrays


@dataclasses.dataclass(frozen=True, eq=False)
class ShardEpisode:
    """One episode of a dataset, the one episode record: its index.json entry, the shard arrays that were read
    (see SHARD_ARRAYS) and what the dataset says of all its episodes (directory, robot, control period).

    Equality is identity. :meth:`resized` gives the episode with square frames (a model's image size) and
    its calibration to match.
    """

    position: int                   # in the index's episode list
    entry: dict                     # the index.json entry: shard, episode_id, instruction, task, success, camera, ...
    shard: Path
    arrays: dict[str, np.ndarray]
    dataset: Path = Path()          # the dataset directory
    robot: str = ""                 # the dataset's robot
    control_period_s: float = 0.0   # the dataset's control period (one frame per control step)
    image_size: int | None = None   # frames resized to image_size x image_size; None: as recorded

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else int(self.entry.get("num_samples", 0))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def episode_id(self) -> str:
        """The entry's episode_id, else episode_<position>."""
        return str(self.entry.get("episode_id") or f"episode_{self.position:06d}")

    @property
    def name(self) -> str:
        """Dataset-qualified: "<dataset directory name>/<episode_id>"."""
        return f"{self.dataset.name}/{self.episode_id}"

    @property
    def frames(self) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB (H = W = image_size when resized)."""
        return self.arrays["frames"]

    @property
    def ee_pose(self) -> np.ndarray:
        """(N, 7) xyz + quaternion xyzw in the robot base frame."""
        return self.arrays["ee_pose"]

    @property
    def actions(self) -> np.ndarray:
        """(N, action_dim): the step of the chunk in force that is due at each frame."""
        return self.arrays["actions"]

    @property
    def instruction(self) -> str:
        return str(self.entry.get("instruction", ""))

    @property
    def task(self) -> str:
        return str(self.entry.get("task", ""))

    @property
    def success(self) -> bool | None:
        """True / False, or None when the outcome is unknown (see alignment.episode_success)."""
        return self.entry.get("success")

    @functools.cached_property
    def calibration(self) -> CameraCalibration | None:
        """The entry's camera (episode_calibration), resized to image_size x image_size when the frames are."""
        calibration = episode_calibration(self.entry)
        if calibration is not None and self.image_size is not None:
            calibration = calibration.resized(self.image_size, self.image_size)
        return calibration

    def resized(self, size: int) -> "ShardEpisode":
        """This episode with its frames resized to size x size (resize_frames: cv2.INTER_AREA) and its
        calibration resized to match (checked here: a malformed camera entry is a ConfigError)."""
        if size <= 0:
            raise ConfigError(f"image_size must be positive, got {size}")
        if "frames" not in self.arrays:
            raise ConfigError(f"{self.shard}: resizing needs the frames, only {' / '.join(self.arrays)} were read")
        episode = dataclasses.replace(self, arrays={**self.arrays, "frames": resize_frames(self.frames, size)},
                                      image_size=size)
        episode.calibration  # parsed now: a malformed camera entry fails here, not when the frames are drawn
        return episode


class EpisodeDataset:
    """The one reader of a training-shard dataset (what bags2dataset and lerobot2dataset write).

    Opening checks the index (read_dataset_index: readable, this shard format, and the action space when
    given); each episode's shard is read when asked for, only the arrays asked for, and checked
    (_checked_arrays: one row per sample, frames (N, H, W, 3) uint8, ee_pose (N, 7) and actions
    (N, action_dim) finite). A shard that cannot be read (missing, damaged, lacking an array) or fails the
    checks is a ConfigError naming it.
    """

    def __init__(self, root: str | Path, action_space: str | None = None, needed_by: str = ""):
        self.root = Path(root)
        self.index = read_dataset_index(self.root, action_space, needed_by)

    @property
    def entries(self) -> list[dict]:
        episodes = self.index.get("episodes", [])
        return episodes if isinstance(episodes, list) else []

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def robot(self) -> str:
        return str(self.index.get("robot", ""))

    @property
    def action_space(self) -> str:
        return str(self.index.get("action_space", ""))

    @property
    def control_period_s(self) -> float:
        return float(self.index.get("control_period_s") or 0.0)

    @property
    def action_dim(self) -> int | None:
        action_dim = self.index.get("action_dim")
        return action_dim if isinstance(action_dim, int) and not isinstance(action_dim, bool) else None

    def episode(self, position: int, arrays: Sequence[str] = SHARD_ARRAYS, *,
                image_size: int | None = None) -> ShardEpisode:
        """Episode `position` of the index with the shard arrays named in `arrays`, checked; with `image_size`
        its frames and calibration resized to image_size x image_size (ShardEpisode.resized)."""
        entry = self.entries[position]
        shard = self.root / str(entry.get("shard", ""))
        try:
            with np.load(shard, allow_pickle=False) as data:
                read = {name: data[name] for name in arrays}
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{shard}: cannot read {' / '.join(arrays)}: {exc}") from None
        episode = ShardEpisode(position, entry, shard, _checked_arrays(shard, read, self.action_dim), self.root,
                               self.robot, self.control_period_s)
        return episode if image_size is None else episode.resized(image_size)

    def episodes(self, arrays: Sequence[str] = SHARD_ARRAYS, *, known_outcome_for: str | None = None,
                 only_successful: bool = False, image_size: int | None = None) -> Iterator[ShardEpisode]:
        """The episodes in index order, each shard read when its episode comes (see episode). With
        `known_outcome_for` (who trains on outcomes, e.g. "SFT") only those whose success is known, with one
        warning naming the others (episodes_with_known_outcome); with `only_successful` only the successful
        ones (no other shard is read)."""
        selected = episodes_with_known_outcome(self.index, self.root, known_outcome_for) \
            if known_outcome_for is not None else list(enumerate(self.entries))
        for position, entry in selected:
            if not only_successful or entry.get("success"):
                yield self.episode(position, arrays, image_size=image_size)
