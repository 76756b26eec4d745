"""Per-robot input/output transforms (openpi-style frozen dataclasses): normalisation statistics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from prophrl_common.config_io import ConfigError

MIN_STD = 1e-3  # dimensions that never move (e.g. a fixed rotation) must not blow up when normalised


@dataclasses.dataclass(frozen=True)
class NormStats:
    """z-score statistics for the proprio state and the robot's action dimensions."""

    state_mean: tuple[float, ...]
    state_std: tuple[float, ...]
    action_mean: tuple[float, ...]
    action_std: tuple[float, ...]

    @property
    def state_dim(self) -> int:
        return len(self.state_mean)

    @property
    def action_dim(self) -> int:
        return len(self.action_mean)

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> "NormStats":
        return cls((0.0,) * state_dim, (1.0,) * state_dim, (0.0,) * action_dim, (1.0,) * action_dim)

    @classmethod
    def from_data(cls, states: np.ndarray, actions: np.ndarray) -> "NormStats":
        """states (N, S), actions (N, ..., A) -> stats with std floored at MIN_STD."""
        states = np.asarray(states, np.float64).reshape(-1, np.shape(states)[-1])
        actions = np.asarray(actions, np.float64).reshape(-1, np.shape(actions)[-1])
        if not (np.isfinite(states).all() and np.isfinite(actions).all()):
            raise ValueError("cannot compute normalisation statistics from data with NaN/inf")
        return cls(tuple(states.mean(0)), tuple(np.maximum(states.std(0), MIN_STD)),
                    tuple(actions.mean(0)), tuple(np.maximum(actions.std(0), MIN_STD)))

    def _t(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self._t(self.state_mean, state)) / self._t(self.state_std, state)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self._t(self.action_mean, action)) / self._t(self.action_std, action)

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return action * self._t(self.action_std, action) + self._t(self.action_mean, action)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "NormStats":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            stats = cls(**{k: tuple(float(x) for x in data[k]) for k in
                           ("state_mean", "state_std", "action_mean", "action_std")})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed normalisation statistics: {exc}") from exc
        if len(stats.state_mean) != len(stats.state_std) or len(stats.action_mean) != len(stats.action_std):
            raise ConfigError(f"{path}: mean and std lengths differ")
        if min(stats.state_std + stats.action_std) <= 0 or not np.isfinite(
                stats.state_mean + stats.state_std + stats.action_mean + stats.action_std).all():
            raise ConfigError(f"{path}: statistics must be finite with positive std")
        return stats


def policy_state(ee_pose: np.ndarray, gripper_command: float) -> np.ndarray:
    """The proprio vector the policy sees (prophrl_common.chunks.POLICY_STATE_NAMES): ee position (3),
    orientation quaternion xyzw (4), and the gripper command in force (0 open .. 1 closed: what the executor last sent on the gripper topic;
    offline, the previous step's gripper action)."""
    return np.concatenate([ee_pose, [gripper_command]]).astype(np.float32)
