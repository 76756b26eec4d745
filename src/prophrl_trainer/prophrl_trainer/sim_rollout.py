"""Closed-loop episodes in the physics sim without a ROS graph: fast and deterministic.

The same chain as the live stack, in one process: a controller (scripted expert or policy) emits
ee_delta_7d chunks, executed as the executor node executes them (ChunkStepper, every row through the
SafetyFilter), the arm moves one control period, and the camera renders at the control rate. Used for
bulk demonstration collection (written to the same rosbag2 layout as the recorder node), policy evaluation
on seeded held-out initial states, and ground truth for world-model data.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from prophrl_data.episode_steps import EpisodeOutcome, StepRecord
from prophrl_robot.chunk_stepper import ChunkStepper
from prophrl_robot.safety import SafetyFilter


class Controller(Protocol):
    def reset(self, seed: int) -> None: ...

    def chunk(self, image: np.ndarray, instruction: str, observation, gripper_command: float) -> np.ndarray:
        """(horizon, 7) ee_delta_7d actions for the current observation."""


class ExpertController:
    def __init__(self, task: str, control_period_s: float, *, horizon: int = 10, noise_std: float = 0.0,
                 skill: float = 1.0):
        from prophrl_sim.expert import ScriptedExpert

        self.expert = ScriptedExpert(task, control_period_s, horizon=horizon, noise_std=noise_std, skill=skill)

    def reset(self, seed: int) -> None:
        self.expert.reset(seed)

    def chunk(self, image, instruction, observation, gripper_command):
        return self.expert.plan(observation.ee_pose, observation.object_poses, observation.time_s)


class PolicyController:
    """A VLAPolicy acting on the rendered frame, instruction, ee pose and gripper command in force."""

    def __init__(self, policy, mode: str = "ode", seed: int = 0, num_steps: int = 0):
        import torch

        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0 (0: the policy's own sampler), got {num_steps}")
        self.policy, self.mode = policy.eval(), mode
        self.device = policy.action_pos.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.sampler = policy.sampler_with(num_steps)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def chunk(self, image, instruction, observation, gripper_command):
        import torch

        from prophrl_policy.modeling_vla import Observation
        from prophrl_policy.transforms import policy_state

        state = policy_state(observation.ee_pose.vector, gripper_command)
        obs = Observation.from_frames(image[None], [instruction], state[None], self.policy.config, device=self.device)
        with torch.inference_mode():
            sample = self.policy.predict_action_chunk(obs, mode=self.mode, sampler=self.sampler,
                                                      generator=self.generator)
        return sample.actions[0].cpu().numpy()


class ChunkExecution:
    """One sim episode taking ee_delta_7d rows as the executor node takes them: each row through the SafetyFilter
    (a held row moves nothing and keeps the gripper command in force), then one control period of the arm.
    The one rule of executing actions in the in-process sim (episodes here, rollouts in sim_backend)."""

    def __init__(self, sim):
        self.sim = sim
        self.safety = SafetyFilter(sim.robot)
        self.gripper = 0.0              # the gripper command in force (0 open .. 1 closed)
        self.holds = 0                  # rows the safety filter held
        self.observation = None

    def reset(self, seed: int):
        self.observation = self.sim.reset(seed)
        self.gripper, self.holds = 0.0, 0
        return self.observation

    def filter(self, commanded: np.ndarray) -> np.ndarray:
        """The row the arm applies for a commanded row: the safety filter's output, or a hold."""
        result = self.safety.filter_ee_delta(commanded, self.observation.ee_pose.position)
        if result.hold:
            self.holds += 1
            return np.array([0, 0, 0, 0, 0, 0, self.gripper], np.float32)
        applied = np.asarray(result.command, np.float32)
        self.gripper = float(applied[6])
        return applied

    def step(self, applied: np.ndarray) -> None:
        """One control period of the arm under a filtered row."""
        self.sim.step_ee_delta(applied[:3], applied[3:6], float(applied[6]))
        self.observation = self.sim.observe()

    def apply(self, commanded: np.ndarray) -> np.ndarray:
        """filter, then step; returns the row applied."""
        applied = self.filter(commanded)
        self.step(applied)
        return applied


def run_episode(sim, controller: Controller, seed: int, *, max_steps: int = 200, replan_steps: int = 2,
                steps_after_success: int = 5, on_step: Callable[[StepRecord], None] | None = None) -> EpisodeOutcome:
    """Reset the sim to `seed` and run the controller until success (+ a few steps) or max_steps."""
    arm = ChunkExecution(sim)
    arm.reset(seed)
    controller.reset(seed)
    stepper = ChunkStepper()
    success_step = None
    for step in range(max_steps):
        image = sim.render()
        observation = arm.observation
        new_chunk = None
        if not stepper.active or stepper.rows_taken >= replan_steps:
            new_chunk = np.asarray(controller.chunk(image, sim.instruction, observation, arm.gripper), np.float32)
            stepper.start(new_chunk, "ee_delta_7d", sim.robot.control_period_s)
        commanded, _last = stepper.take()
        applied = arm.filter(commanded)
        if on_step is not None:
            on_step(StepRecord(sim.time_s, image, observation, new_chunk, applied, commanded))
        arm.step(applied)
        if arm.observation.success and success_step is None:
            success_step = step
        if success_step is not None and step - success_step >= steps_after_success:
            break
    return EpisodeOutcome(seed, success_step is not None, step + 1, success_step, sim.instruction, arm.holds)
