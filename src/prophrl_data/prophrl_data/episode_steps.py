"""What an in-process episode (prophrl_trainer.sim_rollout) reports: a record per control step and the episode's
outcome, the input of its bag writer (prophrl_data.episode_bags)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class StepRecord:
    """What the robot's topics would carry at one control step (before the step's action)."""

    time_s: float
    image: np.ndarray                # (H, W, 3) uint8
    observation: object              # prophrl_sim.arm_sim.SimObservation
    new_chunk: np.ndarray | None     # the chunk issued at this step, if any
    executed_action: np.ndarray      # (7,) the filtered action actually applied
    commanded_action: np.ndarray     # (7,) the chunk row due at this step, before the safety filter


@dataclasses.dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    steps: int
    success_step: int | None
    instruction: str
    safety_holds: int
