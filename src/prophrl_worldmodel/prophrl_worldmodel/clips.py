"""Prophet training clips and replay episodes from bags2dataset directories (pure numpy / torch, no ROS).

A bags2dataset shard holds one frame per control step (the camera runs at the control rate) and the
ee_delta_7d action executed at each frame: ``actions[i]`` moves the arm from frame ``i`` to frame
``i + 1``. Prophet predicts one frame every ``actions_per_frame`` (apf) control steps, so a clip
starting at control step ``s`` (any step, the frame grid is anchored at the start) is

- ``current_frame``: ``frames[s]``;
- ``history_frames``: ``frames[s - k * apf]`` for k = history_length .. 1 (oldest first); indices
  before the episode start repeat frame 0 (the arm was at rest before it started);
- ``actions``: ``actions[s : s + action_horizon]``, padded past the episode end with zero motion and
  the last gripper command held (see :func:`action_chunk`);
- ``future_frames``: ``frames[s + k * apf]`` for k = 1 .. frames_per_clip (only starts whose future
  frames all exist are sampled);
- ``action_frames`` (when the config uses them): the end-effector poses the chunk leads to, integrated
  from the recorded pose at ``s`` (``render_action_frames`` with the episode's calibration resized to
  the model's image size), and ``calibrated``; an episode without calibration gets black frames and
  ``calibrated=False`` (Prophet then masks the action-frame stream).

Episodes are prophrl_data.shards.ShardEpisode records (:func:`load_episodes`): their frames are
resized (cv2.INTER_AREA, ShardEpisode.resized) to the model's square image size once, when they are
loaded, so the sampler, the model and the fidelity metrics all see the same pixels.

:func:`replay_episode` gives a whole episode for closed-loop replay: its first frame, the recorded
actions cut into consecutive action chunks, and the real frames the model should imagine for them.
Its action frames follow the poses integrated from the episode's first pose through the recorded
actions, as an imagination server would draw them (it never sees the real pose after the start).

:func:`split_episodes` holds out a deterministic subset of every dataset's episodes (chosen by a
hash of the episode id, so it does not depend on the order or the mix of datasets): adaptation
measures its held-out loss and the fidelity evaluation replays the same episodes.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from prophrl_common.chunks import ARM_ACTION_DIM, ARM_GRIPPER
from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import EndEffectorPose
from prophrl_worldmodel.action_frames import ActionFrameStyle, integrate_actions, render_action_frames
from prophrl_worldmodel.configuration_prophet import ProphetConfig
from prophrl_data.shards import EpisodeDataset, ShardEpisode

SUPPORTED_ACTION_SPACE = "ee_delta_7d"
CLIP_ARRAYS = ("frames", "ee_pose", "actions")   # the shard arrays a clip needs


def _open_dataset(dataset_dir: Path) -> EpisodeDataset:
    if not dataset_dir.is_dir():
        raise ConfigError(f"{dataset_dir}: dataset directory not found")
    index_path = dataset_dir / "index.json"
    dataset = EpisodeDataset(dataset_dir)
    index = dataset.index
    if index.get("action_space") != SUPPORTED_ACTION_SPACE or index.get("action_dim") != ARM_ACTION_DIM:
        raise ConfigError(f"{index_path}: Prophet clips need {SUPPORTED_ACTION_SPACE} actions ({ARM_ACTION_DIM} per step); the "
                          f"dataset has {index.get('action_space')!r} with action_dim {index.get('action_dim')}")
    if not isinstance(index.get("episodes"), list) or not index["episodes"]:
        raise ConfigError(f"{index_path}: no episodes")
    return dataset


def load_episodes(dataset_dirs: str | Path | Iterable[str | Path], image_size: int, *,
                  only_successful: bool = False, show_progress: bool = False) -> list[ShardEpisode]:
    """Every episode (CLIP_ARRAYS) of one or more bags2dataset directories of ee_delta_7d actions, frames and
    calibration resized to image_size x image_size (EpisodeDataset.episode with image_size).

    Raises ConfigError naming the directory / shard for anything that is not a usable dataset.
    """
    from tqdm import tqdm

    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    dataset_dirs = [Path(d) for d in dataset_dirs]
    if not dataset_dirs:
        raise ConfigError("no dataset directories given")
    if image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    datasets = [_open_dataset(d) for d in dataset_dirs]  # every directory checked before loading any shard
    episodes = []
    total = sum(len(dataset) for dataset in datasets)
    with tqdm(total=total, desc="load episodes", unit="episode", disable=not show_progress) as bar:
        for dataset in datasets:
            for i, entry in enumerate(dataset.entries):
                bar.update()
                if not only_successful or entry.get("success", False):
                    episodes.append(dataset.episode(i, CLIP_ARRAYS, image_size=image_size))
    if not episodes:
        raise ConfigError(f"{', '.join(map(str, dataset_dirs))}: no {'successful ' if only_successful else ''}"
                          "episodes")
    return episodes


# Rendered action frames a ClipSampler keeps (every clip of a 32 px corpus of 500 episodes takes about 300 MB).
ACTION_FRAME_CACHE_BYTES = 1 << 30


def split_episodes(episodes: Sequence[ShardEpisode],
                   held_out_fraction: float) -> tuple[list[ShardEpisode], list[ShardEpisode]]:
    """(train, held_out): per dataset, round(fraction * n) episodes (at least 1 when the dataset has >= 2
    episodes and fraction > 0, never all of them), picked by a hash of the episode id."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ConfigError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    by_dataset: dict[Path, list[ShardEpisode]] = {}
    for episode in episodes:
        by_dataset.setdefault(episode.dataset, []).append(episode)
    held_out_ids: set[int] = set()
    for members in by_dataset.values():
        n = len(members)
        count = 0 if held_out_fraction == 0 or n < 2 else min(max(round(held_out_fraction * n), 1), n - 1)
        ranked = sorted(members, key=lambda e: (zlib.crc32(e.episode_id.encode()), e.position))
        held_out_ids.update(id(e) for e in ranked[:count])
    train = [e for e in episodes if id(e) not in held_out_ids]
    held_out = [e for e in episodes if id(e) in held_out_ids]
    return train, held_out


def action_chunk(actions: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """(horizon, 7) float32: actions[start : start + horizon], past the end zero motion with the last gripper
    command held (what the executor does when a chunk runs out)."""
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[1] != ARM_ACTION_DIM or not len(actions):
        raise ValueError(f"actions must be (N >= 1, {ARM_ACTION_DIM}), got {actions.shape}")
    if not 0 <= start < len(actions):
        raise ValueError(f"start {start} is outside the episode's {len(actions)} steps")
    chunk = np.zeros((horizon, ARM_ACTION_DIM), np.float32)
    chunk[:, ARM_GRIPPER] = actions[-1, ARM_GRIPPER]
    real = actions[start:start + horizon]
    chunk[:len(real)] = real
    return chunk


def _start_pose(episode: ShardEpisode, step: int) -> EndEffectorPose:
    gripper = float(episode.actions[step - 1, ARM_GRIPPER]) if step > 0 else 0.0  # the command in force
    pose = episode.ee_pose[step]
    return EndEffectorPose.from_quaternion(pose[:3], pose[3:], gripper)


def _action_frames(episode: ShardEpisode, start_pose: EndEffectorPose, chunk: np.ndarray, config: ProphetConfig,
                   style: ActionFrameStyle) -> np.ndarray:
    size = config.image_size
    if episode.calibration is None:
        return np.zeros((config.frames_per_clip, size, size, 3), np.uint8)
    return render_action_frames(episode.calibration, [start_pose], chunk, config.actions_per_frame, style)


class ClipSampler:
    """Prophet training samples (see the module docstring) over a list of episodes.

    ``len(sampler)`` clips: every (episode, start step) whose future frames exist. ``sample(i)`` gives
    numpy arrays, ``batch(indices)`` / ``random_batch(size, rng)`` a dict of torch tensors for
    ``Prophet.training_loss`` (frames uint8, actions float32, calibrated bool).

    A clip's action frames depend only on the clip, and rendering them is most of the cost of drawing a batch
    (a GPU waits for it), so each clip's are kept once rendered, read-only, up to ``action_frame_cache_bytes``.
    """

    def __init__(self, episodes: Sequence[ShardEpisode], config: ProphetConfig,
                 style: ActionFrameStyle = ActionFrameStyle(),
                 action_frame_cache_bytes: int = ACTION_FRAME_CACHE_BYTES):
        self.config, self.style = config, style
        self.episodes = list(episodes)
        clip_bytes = config.frames_per_clip * config.image_size ** 2 * 3
        self._action_frame_capacity = max(action_frame_cache_bytes, 0) // clip_bytes
        self._action_frame_cache: dict[int, np.ndarray] = {}
        span = config.frames_per_clip * config.actions_per_frame  # control steps from the start to the last frame
        for episode in self.episodes:
            if episode.frames.shape[1:] != (config.image_size, config.image_size, 3):
                raise ConfigError(f"{episode.name}: frames are {episode.frames.shape[1:]}, the config needs "
                                  f"{config.image_size}x{config.image_size} (load the episodes at that image size)")
        starts = [(e, s) for e, episode in enumerate(self.episodes) for s in range(len(episode) - span)]
        if not starts:
            raise ConfigError(f"no clip: none of the {len(self.episodes)} episode(s) has the {span + 1} control steps "
                              f"one clip needs ({config.frames_per_clip} frames x {config.actions_per_frame} steps)")
        self._starts = np.asarray(starts, np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def starts(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """(episode position in `episodes`, start step) of each clip."""
        return [(int(e), int(s)) for e, s in self._starts[np.asarray(indices, np.int64)]]

    @property
    def keys(self) -> tuple[str, ...]:
        base = ("history_frames", "current_frame", "actions", "future_frames")
        return base + (("action_frames", "calibrated") if self.config.use_action_frames else ())

    def sample(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        i %= len(self)
        e, s = (int(v) for v in self._starts[i])
        episode, cfg = self.episodes[e], self.config
        apf = cfg.actions_per_frame
        history = np.maximum(s - apf * np.arange(cfg.history_length, 0, -1), 0)
        future = s + apf * np.arange(1, cfg.frames_per_clip + 1)
        chunk = action_chunk(episode.actions, s, cfg.action_horizon)
        out = {"history_frames": episode.frames[history], "current_frame": episode.frames[s], "actions": chunk,
               "future_frames": episode.frames[future]}
        if cfg.use_action_frames:
            out["action_frames"] = self._action_frame_cache.get(i)
            if out["action_frames"] is None:
                out["action_frames"] = _action_frames(episode, _start_pose(episode, s), chunk, cfg, self.style)
                if len(self._action_frame_cache) < self._action_frame_capacity:
                    out["action_frames"].flags.writeable = False
                    self._action_frame_cache[i] = out["action_frames"]
            out["calibrated"] = np.bool_(episode.calibration is not None)
        return out

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        samples = [self.sample(int(i)) for i in indices]
        if not samples:
            raise ValueError("empty batch")
        return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in self.keys}

    def random_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.batch(rng.integers(0, len(self), size=batch_size))

    def frames(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """(count, S, S, 3) uint8 frames drawn uniformly over all control steps (VAE training, statistics)."""
        lengths = np.array([len(e) for e in self.episodes])
        flat = rng.integers(0, lengths.sum(), size=count)
        episode = np.searchsorted(np.cumsum(lengths), flat, side="right")
        step = flat - np.concatenate([[0], np.cumsum(lengths)[:-1]])[episode]
        return torch.from_numpy(np.stack([self.episodes[e].frames[t] for e, t in zip(episode, step)]))

    def all_actions(self) -> np.ndarray:
        """(sum N, 7): every executed action (for Prophet.fit_action_statistics)."""
        return np.concatenate([e.actions for e in self.episodes])


@dataclasses.dataclass(frozen=True)
class ReplayEpisode:
    """One episode cut into consecutive action chunks, for closed-loop replay from its first frame."""

    name: str
    start_frame: np.ndarray              # (S, S, 3) uint8
    history_frames: np.ndarray           # (history_length, S, S, 3), padded with frame 0 like the clips
    action_chunks: np.ndarray            # (N, horizon, 7) float32, the recorded actions
    real_frames: np.ndarray              # (N * F, S, S, 3) uint8, frames[start + k * apf], k = 1 .. N * F
    action_frames: np.ndarray | None     # (N, F, S, S, 3) uint8 (config.use_action_frames), else None
    calibrated: bool
    frame_period_s: float                # time between two predicted frames


def replay_chunks(episode: ShardEpisode, config: ProphetConfig, start: int = 0) -> int:
    """How many whole action chunks (with all their real frames) fit after control step `start`."""
    return max(len(episode) - 1 - start, 0) // config.action_horizon


def replay_episode(episode: ShardEpisode, config: ProphetConfig, chunks: int | None = None, start: int = 0,
                   style: ActionFrameStyle = ActionFrameStyle()) -> ReplayEpisode:
    """The episode from control step `start`: at most `chunks` chunks (default: all that fit)."""
    if chunks is not None and chunks <= 0:
        raise ValueError(f"chunks must be positive, got {chunks}")
    available = replay_chunks(episode, config, start)
    n = available if chunks is None else min(chunks, available)
    if n == 0:
        raise ConfigError(f"{episode.name}: {len(episode)} control steps from step {start} hold no whole action "
                          f"chunk of {config.action_horizon} steps with its frames")
    if episode.frames.shape[1:] != (config.image_size, config.image_size, 3):
        raise ConfigError(f"{episode.name}: frames are {episode.frames.shape[1:]}, the config needs "
                          f"{config.image_size}x{config.image_size}")
    horizon, apf = config.action_horizon, config.actions_per_frame
    action_chunks = np.stack([action_chunk(episode.actions, start + i * horizon, horizon) for i in range(n)])
    real = episode.frames[start + apf * np.arange(1, n * config.frames_per_clip + 1)]
    action_frames = None
    if config.use_action_frames:
        first = _start_pose(episode, start)
        chunk_starts = [first] + [poses[0] for poses in
                                  integrate_actions([first], action_chunks.reshape(-1, ARM_ACTION_DIM), horizon)][:-1]
        action_frames = np.stack([_action_frames(episode, pose, chunk, config, style)
                                  for pose, chunk in zip(chunk_starts, action_chunks)])
    history = episode.frames[np.maximum(start - apf * np.arange(config.history_length, 0, -1), 0)]
    return ReplayEpisode(episode.name, episode.frames[start], history, action_chunks, real, action_frames,
                         episode.calibration is not None, episode.control_period_s * apf)
