"""Policies evaluated inside the world model: Prophet as a checkpoint ranker before anything touches a robot.

Every policy starts from the same held-out sim states as the true evaluation (prophrl_trainer.evaluation:
the sim is reset to each seed and only its first camera frame, instruction, end-effector pose and camera
calibration are kept); from there the policy acts closed loop on Prophet's frames for `chunks` chunks
(deterministic ODE sampling, as in the sim), `rollouts` world-model seeds per state, and the reward judge
decides success (prophrl_trainer.imagined_rollouts). The imagined success of a state is the fraction of its
rollouts judged successful. Judging "every_chunk" (the RL collector's rule) scores the clip so far after each
chunk and counts the first success; "final" scores only the whole clip after the last chunk, so a judge's
false positive has one chance per rollout instead of `chunks`. `prophrl eval --in-imagination` puts it beside
the true success of the same states and reports how well one predicts the other across policies.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_common.config_io import ConfigError
from prophrl_common.devices import torch_device
from prophrl_common.geometry import CameraCalibration
from prophrl_trainer.evaluation import EvalSettings
from prophrl_worldmodel.imagination import ImaginationStart
from prophrl_worldmodel.judge_episodes import JUDGING


@dataclasses.dataclass(frozen=True)
class ImaginedEvalSettings:
    world_model: str                 # Prophet checkpoint directory
    judges: tuple[str, ...]          # reward judge checkpoint directories (several: their ensemble)
    chunks: int = 8                  # policy chunks per rollout (one Prophet clip each)
    rollouts: int = 2                # world-model seeds per state
    num_steps: int | None = None     # Prophet Euler steps per clip (default: its config's)
    seed: int = 0                    # world-model and policy sampling seeds derive from it
    device: str = "cpu"              # where Prophet, the policy and the judge run
    judging: str = "every_chunk"     # JUDGING: when the judge decides (module docstring)

    def validate(self) -> "ImaginedEvalSettings":
        if self.judging not in JUDGING:
            raise ConfigError(f"imagined judging must be one of {', '.join(JUDGING)}, got {self.judging!r}")
        if self.chunks < 1 or self.rollouts < 1 or (self.num_steps is not None and self.num_steps < 1):
            raise ConfigError("imagined evaluation needs chunks, rollouts and num_steps >= 1")
        if not (Path(self.world_model) / "prophet_config.json").is_file():
            raise ConfigError(f"--world-model {self.world_model} is not a Prophet checkpoint (no prophet_config.json)")
        if not self.judges:
            raise ConfigError("imagined evaluation needs a --judge")
        for judge in self.judges:
            if not (judge and Path(judge).is_dir()):
                raise ConfigError(f"--judge {judge!r} is not a judge checkpoint directory")
        return self


def sim_start(sim, seed: int) -> ImaginationStart:
    """Reset `sim` to `seed`: its first frame, instruction, end-effector pose and camera as an imagination start."""
    observation = sim.reset(seed)
    camera = sim.camera_model()
    world_to_camera = np.eye(4)
    rotation = Rotation.from_quat(camera.pose.quaternion).as_matrix()  # optical frame -> base
    world_to_camera[:3, :3] = rotation.T
    world_to_camera[:3, 3] = -rotation.T @ np.asarray(camera.pose.position, np.float64)
    calibration = CameraCalibration.from_camera_info(camera.k, world_to_camera, camera.width, camera.height)
    return ImaginationStart(sim.render()[None], sim.instruction, observation.ee_pose.vector,
                            0.0, calibration)


def held_out_starts(settings: EvalSettings) -> list[ImaginationStart]:
    """The imagination starts of the true evaluation's held-out seeds."""
    from prophrl_sim.arm_sim import ArmSim

    sim = ArmSim(settings.robot, settings.task, camera=settings.camera, image_width=settings.image_size,
                 image_height=settings.image_size)
    try:
        return [sim_start(sim, seed) for seed in range(settings.first_seed, settings.first_seed + settings.episodes)]
    finally:
        sim.close()


def evaluate_in_imagination(policy_dirs: list[str | Path], starts: list[ImaginationStart],
                            settings: ImaginedEvalSettings, show_progress: bool = True) -> list[list[float]]:
    """For each policy, the imagined success (fraction of rollouts judged successful) of every start."""
    import torch
    from tqdm import tqdm

    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.imagined_rollouts import (ImaginationSettings, evaluation_seeds, eyes_mismatch, imagine,
                                                  judge_steps_mismatch)
    from prophrl_trainer.rollouts import InProcessImagination, JudgeScorer
    from prophrl_worldmodel.modeling_prophet import Prophet

    settings = settings.validate()
    device = torch_device(settings.device)
    prophet = Prophet.from_pretrained(settings.world_model, map_location=device).eval()
    backend = InProcessImagination(prophet, settings.num_steps)
    scorer = JudgeScorer.from_pretrained(settings.judges, str(device))
    mismatch = judge_steps_mismatch(settings.judges, backend.steps_per_clip)
    if mismatch:
        warnings.warn(mismatch, stacklevel=2)
    seeds, policy_seed = evaluation_seeds(settings.seed, len(starts))  # the same for every policy
    results = []
    for policy_dir in tqdm(policy_dirs, desc="eval in imagination", unit="policy", disable=not show_progress):
        policy = VLAPolicy.from_pretrained(policy_dir, map_location=str(device)).to(device).eval()
        if policy.config.horizon != backend.action_horizon:
            raise ConfigError(f"{policy_dir}: the policy's chunk horizon is {policy.config.horizon} but the world "
                              f"model executes {backend.action_horizon} actions per clip")
        mismatch = eyes_mismatch(policy, prophet.config.image_size)
        if mismatch:
            warnings.warn(f"{policy_dir}: {mismatch}", stacklevel=2)
        generator = torch.Generator(device=device).manual_seed(policy_seed)
        imagined = imagine(policy, backend, scorer, starts, seeds, settings.rollouts, "ode", generator,
                           ImaginationSettings(settings.chunks, policy.config.sampler,
                                               early_termination=settings.judging == "every_chunk"))
        results.append(imagined.success.mean(axis=1).astype(float).tolist())
    return results


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation of two equally long series; None when either is constant or has < 3 points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y):
        raise ValueError(f"series of {len(x)} and {len(y)} values")
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])
