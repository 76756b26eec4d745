"""What a policy checkpoint was trained for (``embodiment.json``) and the check before serving it.

A policy's actions and proprio state only mean something on the robot, action space and state layout
it learned them on: end-effector deltas in one arm's base frame, a state of that arm's end-effector
pose (the norm stats beside it, ``norm_stats.json``, are that data's statistics). ``VLAPolicy.save_pretrained``
writes the :class:`Embodiment` when the policy knows it (SFT records the dataset's robot, RL checkpoints
keep their SFT policy's) and :func:`check_embodiment` is what the policy node runs before it serves a
checkpoint: another robot, action space or state layout is refused, naming each difference.

Checkpoints saved before this was recorded have no ``embodiment.json``. They are served with a warning,
because nothing in them contradicts the deployment beyond what is checked anyway (the policy's action
and state dimensions against the node's 7-D ``ee_delta_7d`` actions and 8-D state); re-train (or
re-save) them to record it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

from prophrl_common.config_io import ConfigError, dataclass_from_mapping, dataclass_to_json

EMBODIMENT_NAME = "embodiment.json"


@dataclasses.dataclass(frozen=True)
class Embodiment:
    robot: str                     # robot config name (config/robots), e.g. franka_fr3
    action_space: str              # ActionChunk.action_space the policy emits, e.g. ee_delta_7d
    state_names: tuple[str, ...]   # the proprio state layout, one name per dimension
    control_period_s: float        # seconds per action step in the training data

    def validate(self, source: str) -> "Embodiment":
        if not self.robot or not self.action_space:
            raise ConfigError(f"{source}: robot and action_space must be non-empty")
        if not self.state_names:
            raise ConfigError(f"{source}: state_names is empty")
        if not (math.isfinite(self.control_period_s) and self.control_period_s > 0):
            raise ConfigError(f"{source}: control_period_s must be a positive number")
        return self

    def to_json(self) -> str:
        return dataclass_to_json(self)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "Embodiment":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the checkpoint's embodiment: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the embodiment must be a JSON object")
        return dataclass_from_mapping(cls, data, str(path)).validate(str(path))


def check_embodiment(embodiment: Embodiment | None, robot_name: str, action_space: str,
                     state_names: Sequence[str]) -> str | None:
    """Raise ConfigError naming every difference between what the checkpoint was trained for and
    where it is about to run; return a warning for a checkpoint that records nothing, else None."""
    if embodiment is None:
        return (f"the checkpoint records no robot, action space or state layout (saved before they were "
                f"recorded): serving it for robot {robot_name} on trust; re-train it to record them")
    problems = []
    if embodiment.robot != robot_name:
        problems.append(f"it was trained for robot {embodiment.robot}, this node drives {robot_name}")
    if embodiment.action_space != action_space:
        problems.append(f"it emits {embodiment.action_space} actions, this node publishes {action_space}")
    if tuple(embodiment.state_names) != tuple(state_names):
        problems.append(f"its state layout is {list(embodiment.state_names)}, this node provides {list(state_names)}")
    if problems:
        raise ConfigError("checkpoint does not fit: " + "; ".join(problems))
    return None
