"""The reward judge's labelled clips: from recorded episodes, and Prophet-imagined replays of them.

Clips and their labels (PAPER.md: LIBERO's judge is a classifier trained on rollouts labelled by the
simulator; we also label Prophet-imagined clips by the sim's ground truth, for domain match).

A *clip* is an episode's frames from its first frame up to some last frame: the judge scores a whole
rollout from its start. Labels must be honest about the state the clip ends in, and bags2dataset
shards do not store the step at which success happened, so labels rely on how sim episodes end
(``prophrl_trainer.sim_rollout.run_episode``): a successful episode stops ``steps_after_success``
(default 5) control steps after the success step, and a failed one runs to ``max_steps``. With L
frames (one per control step) the first frame that shows the success state of a successful episode
is L - steps_after_success. Hence, per episode:

- positive (1): a successful episode's clip ending at one of its last ``positive_tail_frames``
  frames (default 3, all after the success frame, with 2 frames to spare);
- negative (0): ``negatives_per_success`` prefixes of a successful episode ending at least
  ``negative_margin_frames`` frames before the success frame ("not yet successful": the cube is
  still on the table or only just grasped), and, for a failed episode, the whole episode plus
  ``negatives_per_failure - 1`` of its prefixes (it never succeeded).

Every prefix is at least ``min_clip_frames`` long. Episodes too short for a valid negative prefix
contribute positives only.

Imagined clips (:func:`imagined_clips`): each recorded episode's actions are replayed through
Prophet from the episode's first frame by the closed-loop imagination RL's reward scores
(``imagination.ImaginedRollouts``: the same history buffer, end-effector pose integrated from the actions, and
action frames where the episode's camera is calibrated), in chunks of ``action_horizon`` actions; the
last chunk is padded with "hold still" actions: zero motion, the last gripper command. Imagined
frame k (frame 0 = the real first frame) stands for real frame k * actions_per_frame. A real clip
end e becomes imagined end floor(e / apf) for negatives (an earlier state, so still not successful)
and ceil(e / apf) for positives (a later state: the success state persists while the arm holds).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.config_io import ConfigError
from prophrl_data.shards import EpisodeDataset, ShardEpisode
from prophrl_worldmodel.modeling_judge import frames_at



@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How clips are cut from episodes and labelled (see the module docstring)."""

    steps_after_success: int = 5      # sim_rollout.run_episode's default
    positive_tail_frames: int = 3
    negative_margin_frames: int = 10
    negatives_per_success: int = 3
    negatives_per_failure: int = 3
    min_clip_frames: int = 8
    seed: int = 0

    def validate(self) -> "ClipSettings":
        if not 1 <= self.positive_tail_frames <= self.steps_after_success:
            raise ConfigError("positive_tail_frames must be in [1, steps_after_success]: a positive clip must end "
                              "at or after the success frame")
        for key in ("steps_after_success", "negative_margin_frames", "negatives_per_success",
                    "negatives_per_failure", "min_clip_frames"):
            if getattr(self, key) < 0:
                raise ConfigError(f"clip settings: {key} must be >= 0")
        if self.min_clip_frames < 2:
            raise ConfigError("clip settings: min_clip_frames must be >= 2")
        return self


@dataclasses.dataclass
class ClipSet:
    """Labelled clips. Unpacks as (clips, labels, instructions) for convenience."""

    clips: list[np.ndarray]           # (T_i, H, W, 3) uint8 each (prefixes are views of episode frames)
    labels: np.ndarray                # (N,) int64, 1 = success
    instructions: list[str]
    groups: list[str]                 # episode name per clip ("dataset/episode_id"): splits never cut an episode
    sources: list[str]                # "real" | "imagined" | "rl" (RL rollouts in the sim: judge_mined_clips)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        n = len(self.clips)
        if not (len(self.labels) == len(self.instructions) == len(self.groups) == len(self.sources) == n):
            raise ValueError("ClipSet fields have different lengths")

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter((self.clips, self.labels, self.instructions))

    def subset(self, indices: Iterable[int]) -> "ClipSet":
        idx = list(indices)
        return ClipSet([self.clips[i] for i in idx], self.labels[idx], [self.instructions[i] for i in idx],
                       [self.groups[i] for i in idx], [self.sources[i] for i in idx])

    def __add__(self, other: "ClipSet") -> "ClipSet":
        return ClipSet(self.clips + other.clips, np.concatenate([self.labels, other.labels]),
                       self.instructions + other.instructions, self.groups + other.groups,
                       self.sources + other.sources)

    def counts(self) -> dict[str, int]:
        return {"clips": len(self), "positives": int(self.labels.sum()), "negatives": int((1 - self.labels).sum()),
                "episodes": len(set(self.groups))}


def load_episodes(dataset_dirs: str | Path | Sequence[str | Path]) -> list[ShardEpisode]:
    """Every episode of known outcome of one or more bags2dataset outputs, with its frames and executed actions
    (one per frame, checked by the reader); those of unknown outcome are left out with a warning (see
    prophrl_data.shards.episodes_with_known_outcome)."""
    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    episodes = [episode for directory in map(Path, dataset_dirs)
                for episode in EpisodeDataset(directory).episodes(("frames", "actions", "ee_pose"),
                                                                  known_outcome_for="judge training")]
    if not episodes:
        raise ConfigError(f"no episodes in {[str(d) for d in dataset_dirs]}")
    return episodes


def clip_ends(length: int, success: bool, settings: ClipSettings, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(last frame index, label) pairs for an episode of `length` frames (see the module docstring)."""
    ends: list[tuple[int, int]] = []
    if success:
        ends += [(e, 1) for e in range(max(0, length - settings.positive_tail_frames), length)]
        last_negative = length - settings.steps_after_success - 1 - settings.negative_margin_frames
        count = settings.negatives_per_success
    else:
        ends.append((length - 1, 0))
        last_negative = length - 2
        count = settings.negatives_per_failure - 1
    first = settings.min_clip_frames - 1
    if count > 0 and last_negative >= first:
        choices = np.arange(first, last_negative + 1)
        picked = rng.choice(choices, size=min(count, len(choices)), replace=False)
        ends += [(int(e), 0) for e in sorted(picked)]
    return ends


def _rng(settings: ClipSettings, name: str) -> np.random.Generator:
    import zlib

    return np.random.default_rng([settings.seed, zlib.crc32(name.encode())])


def _outcome(episode: ShardEpisode) -> bool:
    """The episode's success; one of unknown outcome has no labelled clips (load_episodes leaves it out)."""
    if episode.success is None:
        raise ConfigError(f"{episode.name}: the outcome is unknown, its clips cannot be labelled")
    return bool(episode.success)


def clips_from_episodes(episodes: Sequence[ShardEpisode], settings: ClipSettings = ClipSettings()) -> ClipSet:
    """Labelled prefixes of episodes of known outcome (see the module docstring), grouped by episode name."""
    settings.validate()
    clips, labels, instructions, groups = [], [], [], []
    for ep in episodes:
        for end, label in clip_ends(len(ep.frames), _outcome(ep), settings, _rng(settings, ep.name)):
            clips.append(ep.frames[:end + 1])
            labels.append(label)
            instructions.append(ep.instruction)
            groups.append(ep.name)
    return ClipSet(clips, np.array(labels, np.int64), instructions, groups, ["real"] * len(clips))


def clips_from_datasets(dataset_dirs, settings: ClipSettings = ClipSettings()) -> ClipSet:
    """Sim-labelled clips from bags2dataset outputs: a ClipSet, which unpacks as (clips, labels, instructions)."""
    return clips_from_episodes(load_episodes(dataset_dirs), settings)


def replay_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """(L, 7) executed actions -> (N, horizon, 7) chunks covering the L - 1 transitions of the episode,
    the last chunk padded with hold-still actions (zero motion, the last gripper command)."""
    transitions = max(1, len(actions) - 1)
    n = math.ceil(transitions / horizon)
    out = np.zeros((n * horizon, ARM_ACTION_DIM), np.float32)
    used = actions[:transitions, :ARM_ACTION_DIM]
    out[:len(used)] = used
    out[len(used):, 6] = actions[max(0, transitions - 1), 6]
    return out.reshape(n, horizon, ARM_ACTION_DIM)


def replay_start(episode: ShardEpisode):
    """Where Prophet's replay of a recorded episode begins, as RL's imagination starts do: its first frame,
    instruction, end-effector pose (when the shard has one; gripper open) and camera calibration."""
    from prophrl_worldmodel.imagination import ImaginationStart

    pose = episode.arrays.get("ee_pose")
    return ImaginationStart(episode.frames[:1], episode.instruction, None if pose is None else pose[0], 0.0,
                            episode.calibration)


def imagined_videos(prophet, episodes: Sequence[ShardEpisode], *, num_steps: int | None = None,
                    batch_size: int = 4, seed: int = 0, show_progress: bool = False) -> list[np.ndarray]:
    """Prophet's replay of each recorded episode's actions from its first frame (replay_start, replay_chunks):
    (1 + chunks x frames_per_clip, H, W, 3) uint8 videos at Prophet's size, led by the real first frame.
    Episode i of the list draws its world-model noise from seed + i."""
    from tqdm import tqdm

    from prophrl_worldmodel.imagination import ImaginedRollouts, step_together

    episodes = list(episodes)
    config = prophet.config
    horizon = config.action_horizon
    # Episodes with the same number of chunks roll out together.
    by_chunks: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_chunks.setdefault(len(replay_chunks(ep.actions, horizon)), []).append(i)
    videos: dict[int, np.ndarray] = {}
    batches = [(n, idx[j:j + batch_size]) for n, idx in sorted(by_chunks.items())
               for j in range(0, len(idx), batch_size)]
    was_training = prophet.training
    prophet.eval()
    try:
        for _, members in tqdm(batches, desc="imagine episodes", unit="batch", disable=not show_progress):
            groups = [ImaginedRollouts(prophet, replay_start(episodes[i]), 1, num_steps=num_steps, seed=seed + i)
                      for i in members]
            chunks = [replay_chunks(episodes[i].actions, horizon) for i in members]
            for step in range(len(chunks[0])):
                step_together(groups, [episode_chunks[step][None] for episode_chunks in chunks])
            start = np.stack([episodes[i].frames[0] for i in members])
            first = frames_at(start, np.arange(len(members)), config.image_size).mul(255).permute(0, 2, 3, 1)
            first = first.round().clamp(0, 255).to(torch.uint8).numpy()
            for row, (i, group) in enumerate(zip(members, groups)):
                videos[i] = np.concatenate([first[row:row + 1], group.frames[0]])
    finally:
        prophet.train(was_training)
    return [videos[i] for i in range(len(episodes))]


def imagined_clips(prophet, dataset_dirs=None, settings: ClipSettings = ClipSettings(), *,
                   episodes: Sequence[ShardEpisode] | None = None, max_episodes: int | None = None,
                   num_steps: int | None = None, batch_size: int = 4, seed: int = 0,
                   show_progress: bool = False, videos: Sequence[np.ndarray] | None = None) -> ClipSet:
    """Replay recorded episodes' actions through Prophet from their first frame (imagined_videos, or the
    `videos` already made of the same episodes); label every imagined clip with that episode's ground truth
    (see the module docstring). Pass dataset_dirs or episodes."""
    settings.validate()
    if episodes is None:
        if dataset_dirs is None:
            raise ValueError("imagined_clips needs dataset_dirs or episodes")
        episodes = load_episodes(dataset_dirs)
    episodes = list(episodes)[:max_episodes]
    if videos is None:
        videos = imagined_videos(prophet, episodes, num_steps=num_steps, batch_size=batch_size, seed=seed,
                                 show_progress=show_progress)
    elif len(videos) != len(episodes):
        raise ValueError(f"{len(videos)} imagined videos for {len(episodes)} episodes")
    apf = prophet.config.actions_per_frame
    clips, labels, instructions, groups = [], [], [], []
    for video, ep in zip(videos, episodes):
        last = len(video) - 1
        for end, label in clip_ends(len(ep.frames), _outcome(ep), settings, _rng(settings, ep.name)):
            k = math.ceil(end / apf) if label else end // apf
            k = max(1, min(k, last))
            clips.append(video[:k + 1])
            labels.append(label)
            instructions.append(ep.instruction)
            groups.append(ep.name)
    return ClipSet(clips, np.array(labels, np.int64), instructions, groups, ["imagined"] * len(clips))
