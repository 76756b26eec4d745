"""Initial states of imagined rollouts: the starts of recorded episodes (first frames, instruction,
end-effector pose), drawn with a seed per rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prophrl_common import training_state
from prophrl_common.config_io import ConfigError
from prophrl_data.shards import EpisodeDataset
from prophrl_worldmodel.imagination import ImaginationStart



class InitialStateSampler:
    """Start states for imagination from recorded episodes (bags2dataset outputs): each episode's first
    `context_frames` frames (the last is the start frame), its instruction, the end-effector pose at the
    start frame and the gripper command then in force (0 at an episode's first frame, else the previous
    step's gripper action, the SFT convention). Draws are seeded (per rank) and checkpointable.

    held_out: that many episodes (a choice fixed by `seed`, the same on every rank) become `validation` and are
    never drawn by `sample` or `fixed`."""

    def __init__(self, dataset_dirs: Sequence[str | Path], seed: int = 0, context_frames: int = 1, rank: int = 0,
                 held_out: int = 0):
        if isinstance(dataset_dirs, (str, Path)):
            dataset_dirs = [dataset_dirs]
        if not dataset_dirs:
            raise ConfigError("no dataset directories given")
        if context_frames < 1:
            raise ConfigError(f"context_frames must be >= 1, got {context_frames}")
        states: list[ImaginationStart] = []
        for directory in dataset_dirs:
            states += _load_starts(Path(directory), context_frames)
        self._split(states, seed, rank, held_out)

    @classmethod
    def from_starts(cls, starts: Sequence[ImaginationStart], seed: int = 0, rank: int = 0,
                    held_out: int = 0) -> "InitialStateSampler":
        """A sampler over given starts (e.g. sim_backend.sim_starts) instead of recorded episodes'."""
        if not starts:
            raise ConfigError("no initial states given")
        sampler = cls.__new__(cls)
        sampler._split(list(starts), seed, rank, held_out)
        return sampler

    def _split(self, states: list[ImaginationStart], seed: int, rank: int, held_out: int) -> None:
        self.states = states
        self.seed = int(seed)
        self.validation: list[ImaginationStart] = []
        if held_out:
            if not 0 < held_out < len(self.states):
                raise ConfigError(f"cannot hold out {held_out} of {len(self.states)} initial states for "
                                  "validation: at least one must be left for training")
            order = np.random.default_rng([self.seed, 2_000_003]).permutation(len(self.states))
            self.validation = [self.states[i] for i in sorted(order[:held_out])]
            self.states = [self.states[i] for i in sorted(order[held_out:])]
        self.rng = np.random.default_rng([self.seed, int(rank)])

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, n: int) -> list[ImaginationStart]:
        """n starts; without replacement while the pool is large enough."""
        index = self.rng.choice(len(self.states), size=n, replace=n > len(self.states))
        return [self.states[i] for i in index]

    def fixed(self, n: int) -> list[ImaginationStart]:
        """The same n starts every time (evaluation); does not touch the training draws."""
        rng = np.random.default_rng([self.seed, 1_000_003])
        index = rng.choice(len(self.states), size=n, replace=n > len(self.states))
        return [self.states[i] for i in index]

    def get_state(self) -> dict:
        return training_state.numpy_rng_state(self.rng)

    def set_state(self, state: dict) -> None:
        training_state.set_numpy_rng_state(self.rng, state)


def _load_starts(dataset_dir: Path, context_frames: int) -> list[ImaginationStart]:
    starts = []
    dataset = EpisodeDataset(dataset_dir, "ee_delta_7d", needed_by="RL")
    for episode in dataset.episodes(("frames", "ee_pose", "actions")):
        frames, ee_pose, actions = episode.frames, episode.ee_pose, episode.actions
        if len(frames) < context_frames:
            continue
        start = context_frames - 1
        gripper = float(actions[start - 1, 6]) if start > 0 else 0.0
        starts.append(ImaginationStart(frames[:context_frames], episode.instruction,
                                       ee_pose[start].astype(np.float64), gripper))
    if not starts:
        raise ConfigError(f"{dataset_dir}: no episode with at least {context_frames} frames")
    return starts
