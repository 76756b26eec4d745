"""Rollout backends (who imagines the next clips) and scorers (who rewards them), ROS-free.

RolloutBackend / RolloutScorer are the seam: in process (InProcessImagination, JudgeScorer, the test reward
EndEffectorDisplacementReward) or over ROS (prophrl_trainer.ros_backends).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.imagination import ImaginationStart
from prophrl_worldmodel.judge_ensemble import DEFAULT_DISAGREEMENT



@dataclasses.dataclass
class RolloutGroup:
    """G rollouts from one start, as the trainer sees them; a backend advances them.

    current_frames (G, H, W, 3) uint8: what each rollout's camera shows now; states: the policy's
    proprio (G, 8) after each executed chunk, states[0] at the start; clips: (G, F, H, W, 3) per chunk;
    success (G,) bool: whether each rollout has succeeded so far by the world's own task check, where the world
    knows it (the physics sim, sim_backend), else None.
    """

    instruction: str
    current_frames: np.ndarray
    states: list[np.ndarray]
    clips: list[np.ndarray] = dataclasses.field(default_factory=list)
    handle: object = None
    success: np.ndarray | None = None

    @property
    def num_rollouts(self) -> int:
        return len(self.current_frames)

    @property
    def state(self) -> np.ndarray:
        return self.states[-1]

    @property
    def frames(self) -> np.ndarray:
        """(G, T, H, W, 3): every imagined frame so far."""
        return np.concatenate(self.clips, axis=1)

    @property
    def state_history(self) -> np.ndarray:
        """(G, chunks + 1, 8)."""
        return np.stack(self.states, axis=1)

    def record(self, clip: np.ndarray, state: np.ndarray) -> None:
        self.clips.append(clip)
        self.states.append(np.asarray(state, np.float32))
        self.current_frames = clip[:, -1]


class RolloutBackend(Protocol):
    """Closed-loop imagination of groups of rollouts (in process: InProcessImagination; over ROS:
    ros_backends.ImagineClientBackend)."""

    action_horizon: int

    def open(self, starts: Sequence[ImaginationStart], num_rollouts: int, seeds: Sequence[int]) -> list[RolloutGroup]:
        ...

    def step(self, groups: Sequence[RolloutGroup], chunks: Sequence[np.ndarray]) -> None:
        """Execute chunks[i] (G, horizon, 7) in groups[i], for every i (concurrently where possible)."""

    def close(self, groups: Sequence[RolloutGroup]) -> None:
        ...


class RolloutScorer(Protocol):
    """Judges rollout clips (the reward judge, in process or over ROS)."""

    def score(self, clips: Sequence[np.ndarray], instructions: Sequence[str],
              states: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """clips: (T_i, H, W, 3) uint8 each; states: (chunks_i + 1, 8) each (judges may ignore them)
        -> (success probabilities (B,) float32, success decisions (B,) bool: the judge's own threshold)."""


def start_state(start: ImaginationStart) -> np.ndarray:
    if start.ee_pose is None:
        raise ConfigError("RL needs the end-effector pose of each start (the policy's proprio state)")
    return np.concatenate([start.ee_pose, [start.gripper]]).astype(np.float32)


def start_frames(start: ImaginationStart, num_rollouts: int) -> np.ndarray:
    """(G, H, W, 3): the recorded start frame, what every rollout's policy observes first."""
    return np.repeat(np.asarray(start.context_frames[-1], np.uint8)[None], num_rollouts, 0)


class InProcessImagination:
    """RolloutBackend over a Prophet in this process (prophrl_worldmodel.imagination.ImaginedRollouts; every
    group advances in one batched world-model call, imagination.step_together)."""

    supports_shared_noise = True

    def __init__(self, prophet, num_steps: int | None = None, shared_noise: bool = False):
        self.prophet = prophet
        self.num_steps = num_steps or None
        self.shared_noise = shared_noise
        self.action_horizon = prophet.config.action_horizon

    @property
    def steps_per_clip(self) -> int:
        """The Euler steps each imagined clip is sampled with (0 / None: the Prophet's own)."""
        return self.prophet.sampling_steps(self.num_steps)

    def open(self, starts, num_rollouts, seeds):
        from prophrl_worldmodel.imagination import ImaginedRollouts

        groups = []
        for start, seed in zip(starts, seeds, strict=True):
            state = start_state(start)
            rollouts = ImaginedRollouts(self.prophet, start, num_rollouts, num_steps=self.num_steps, seed=int(seed),
                                        shared_noise=self.shared_noise)
            # the first observation is the recorded start frame itself (as over ROS, where the server's
            # resized copy is never sent back); later ones are the imagined frames
            groups.append(RolloutGroup(start.instruction, start_frames(start, num_rollouts),
                                       [np.repeat(state[None], num_rollouts, 0)], handle=rollouts))
        return groups

    def step(self, groups, chunks):
        from prophrl_worldmodel.imagination import step_together

        clips = step_together([group.handle for group in groups], list(chunks))
        for group, clip in zip(groups, clips, strict=True):
            rollouts = group.handle
            group.record(clip, np.concatenate([rollouts.ee_poses, rollouts.grippers[:, None]], axis=1))

    def close(self, groups):
        for group in groups:
            group.handle = None


class JudgeScorer:
    """RolloutScorer over prophrl_worldmodel's reward judge in this process (the production reward):
    a RewardJudge classifier, a VLMJudge or a JudgeEnsemble, anything with score(clips, instructions) and
    threshold."""

    def __init__(self, judge):
        self.judge = judge
        self.threshold = float(judge.threshold)

    @classmethod
    def from_pretrained(cls, paths: str | Path | Sequence[str | Path], device: str = "cpu",
                        disagreement: float = DEFAULT_DISAGREEMENT) -> "JudgeScorer":
        """One judge checkpoint, or several scored as their ensemble (judge_ensemble)."""
        from prophrl_worldmodel.judge_ensemble import load_judges

        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        return cls(load_judges(paths, "auto", device, disagreement))

    @torch.no_grad()
    def score(self, clips, instructions, states):
        probs = self.judge.score(list(clips), list(instructions))
        probs = torch.as_tensor(probs).detach().float().cpu().numpy().reshape(len(clips))
        return probs, probs >= self.threshold


class EndEffectorDisplacementReward:
    """A programmatic TEST reward, not a task judge: p = sigmoid(direction . (p_end - p_start) / scale) on
    the integrated end-effector position. For tests and smoke runs with an untrained world model, where
    frames carry no task signal. `prophrl train --test-reward ee_right` uses it (right = -y in the
    REP-103 base frame: x forward, y left, z up)."""

    DIRECTIONS = {"ee_right": (0.0, -1.0, 0.0), "ee_left": (0.0, 1.0, 0.0), "ee_up": (0.0, 0.0, 1.0),
                  "ee_forward": (1.0, 0.0, 0.0)}

    def __init__(self, direction=(0.0, -1.0, 0.0), scale: float = 0.02, threshold: float = 0.9):
        direction = np.asarray(direction, np.float64)
        if direction.shape != (3,) or np.linalg.norm(direction) == 0 or scale <= 0 or not 0 < threshold < 1:
            raise ConfigError("displacement reward needs a non-zero 3-vector, scale > 0 and 0 < threshold < 1")
        self.direction = direction / np.linalg.norm(direction)
        self.scale, self.threshold = float(scale), float(threshold)

    @classmethod
    def named(cls, name: str, scale: float = 0.02) -> "EndEffectorDisplacementReward":
        if name not in cls.DIRECTIONS:
            raise ConfigError(f"unknown test reward {name!r}; available: {sorted(cls.DIRECTIONS)}")
        return cls(cls.DIRECTIONS[name], scale)

    def score(self, clips, instructions, states):
        out = []
        for history in states:
            history = np.asarray(history, np.float64)
            moved = float(self.direction @ (history[-1, :3] - history[0, :3]))
            out.append(1.0 / (1.0 + math.exp(-moved / self.scale)))
        probs = np.asarray(out, np.float32)
        return probs, probs >= self.threshold
