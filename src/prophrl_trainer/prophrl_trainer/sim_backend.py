"""RL with the physics sim in Prophet's place: rollouts that are sim episodes, their starts, and the sim's own
success as the reward (`prophrl train --sim ROBOT/TASK`).

What it is for: the ceiling of RL in imagination, and which part loses it. With `SimRollouts` and
`SimSuccessScorer`, FA-GRPO learns from exactly what the true evaluation counts (a perfect world model and a
perfect judge); with `SimRollouts` and the reward judge, from the camera's real frames (a perfect world model,
the real judge). Compared with the same recipe inside Prophet, the three runs say whether the recipe, the
judge or the world model stops the gain.

Each rollout is one `ArmSim` executing every row of the policy's chunks through `sim_rollout.ChunkExecution`
(the safety filter, then one control period), rendering the camera after each row: a chunk's clip is its
`horizon` frames at the control rate, like a recorded episode's. With `every_frame=False` only a chunk's last
frame is rendered (what the policy sees next; the sim's success reward reads no frames), about 3x faster on a
CPU renderer. The sim is deterministic, so the G rollouts
of a group start from the same state and differ only through their actions (what
`shared_world_model_noise` asks of a world model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from prophrl_common.config_io import ConfigError
from prophrl_policy.transforms import policy_state
from prophrl_trainer.rollouts import RolloutGroup
from prophrl_trainer.sim_rollout import ChunkExecution
from prophrl_worldmodel.imagination import ImaginationStart

# How many rollouts (one ArmSim each, about 0.37 GB with its renderer) SimRollouts holds at once; an update's
# groups beyond it are rolled out a few at a time (imagined_rollouts.imagine).
SIM_MAX_ROLLOUTS = 16

# The sim seeds RL draws its starts from: [SIM_RL_FIRST_SEED, + pool). No demonstration, play, held-out
# evaluation (held_out.HELD_OUT_SEED_BASE and up, a few hundred at most) or judge episode uses them.
SIM_RL_FIRST_SEED = 900_000


@dataclasses.dataclass(frozen=True)
class SimStart(ImaginationStart):
    """A start that is a sim episode: the frame and pose after `ArmSim.reset(seed)`."""

    seed: int = 0


def parse_sim(text: str, option: str = "--sim") -> tuple[str, str]:
    """`ROBOT/TASK` (e.g. panda_sim/lift) -> (robot, task): a simulated robot and a sim task (`option` names the
    argument in the error)."""
    from prophrl_common.robots import available_robots, load_robot_config
    from prophrl_sim.tasks import TASKS

    robot, _, task = text.partition("/")
    simulated = [name for name in available_robots() if load_robot_config(name).sim_model]
    if robot not in simulated or task not in TASKS:
        raise ConfigError(f"{option} wants ROBOT/TASK with ROBOT one of {simulated} and TASK one of {sorted(TASKS)}, "
                          f"got {text!r}")
    return robot, task


def sim_starts(robot: str, task: str, count: int, first_seed: int = SIM_RL_FIRST_SEED, *, camera: str = "",
               image_size: int = 128) -> list[SimStart]:
    """The starts of sim seeds first_seed .. first_seed + count - 1."""
    from prophrl_sim.arm_sim import ArmSim

    if count < 1:
        raise ConfigError(f"need at least one sim start, got {count}")
    starts = []
    with ArmSim(robot, task, camera=camera, image_width=image_size, image_height=image_size) as sim:
        for seed in range(first_seed, first_seed + count):
            pose = sim.reset(seed).ee_pose.vector
            starts.append(SimStart(sim.render()[None], sim.instruction,
                                   pose, 0.0, seed=seed))
    return starts


class SimRollouts:
    """RolloutBackend of sim episodes: each rollout owns an ArmSim (created as needed, reused across groups)."""

    supports_shared_noise = True    # deterministic: nothing but the actions differs within a group
    knows_ground_truth = True       # RolloutGroup.success is the sim's own task check

    def __init__(self, robot: str, task: str, action_horizon: int, *, camera: str = "", image_size: int = 128,
                 every_frame: bool = True, max_rollouts: int = SIM_MAX_ROLLOUTS):
        self.robot, self.task, self.camera, self.image_size = robot, task, camera, image_size
        self.every_frame = every_frame
        self.max_rollouts = max_rollouts
        self.action_horizon = int(action_horizon)
        self._idle: list[ChunkExecution] = []
        self._all: list[ChunkExecution] = []

    def _take(self, count: int) -> list[ChunkExecution]:
        from prophrl_sim.arm_sim import ArmSim

        if len(self._all) - len(self._idle) + count > max(self.max_rollouts, count):
            raise RuntimeError(f"SimRollouts holds at most {self.max_rollouts} rollouts at once")
        while len(self._idle) < count:
            arm = ChunkExecution(ArmSim(self.robot, self.task, camera=self.camera, image_width=self.image_size,
                                        image_height=self.image_size))
            self._all.append(arm)
            self._idle.append(arm)
        taken, self._idle = self._idle[:count], self._idle[count:]
        return taken

    def open(self, starts: Sequence[ImaginationStart], num_rollouts: int, seeds: Sequence[int]) -> list[RolloutGroup]:
        groups = []
        for start in starts:
            if not isinstance(start, SimStart):
                raise ConfigError("rollouts in the sim start from sim seeds (sim_backend.sim_starts), not from "
                                  "recorded frames")
            arms = self._take(num_rollouts)
            frames, states = [], []
            for arm in arms:
                observation = arm.reset(start.seed)
                frames.append(arm.sim.render())
                states.append(_state(observation, arm.gripper))
            groups.append(RolloutGroup(arms[0].sim.instruction, np.stack(frames), [np.stack(states)], handle=arms,
                                       success=np.zeros(num_rollouts, bool)))
        return groups

    def step(self, groups: Sequence[RolloutGroup], chunks: Sequence[np.ndarray]) -> None:
        for group, chunk in zip(groups, chunks, strict=True):
            chunk = np.asarray(chunk, np.float32)
            if chunk.shape[:2] != (group.num_rollouts, self.action_horizon):
                raise ValueError(f"expected ({group.num_rollouts}, {self.action_horizon}, 7) actions, got {chunk.shape}")
            clips, states, success = [], [], group.success.copy()
            for j, arm in enumerate(group.handle):
                frames = []
                for k, row in enumerate(chunk[j]):
                    arm.apply(row)
                    if self.every_frame or k == len(chunk[j]) - 1:
                        frames.append(arm.sim.render())
                    success[j] |= arm.observation.success
                clips.append(np.stack(frames))
                states.append(_state(arm.observation, arm.gripper))
            group.record(np.stack(clips), np.stack(states))
            group.success = success

    def close(self, groups: Sequence[RolloutGroup]) -> None:
        for group in groups:
            if group.handle is not None:
                self._idle.extend(group.handle)
                group.handle = None

    def shutdown(self) -> None:
        """Close every sim (the backend cannot be used afterwards)."""
        for arm in self._all:
            arm.sim.close()
        self._all, self._idle = [], []


def _state(observation, gripper: float) -> np.ndarray:
    return policy_state(observation.ee_pose.vector, gripper)


class SimSuccessScorer:
    """The sim's own success as the reward: 1 for a rollout that has succeeded at any step so far (what the true
    evaluation counts), else 0. Reads RolloutGroup.success, so it needs a backend that knows the ground truth."""

    reads_ground_truth = True
    threshold = 0.5

    def score(self, clips, instructions, states, truth=None):
        if truth is None:
            raise ConfigError("the sim's success reward needs rollouts in the sim (prophrl train --sim ROBOT/TASK)")
        decisions = np.asarray(truth, bool).reshape(len(clips))
        return decisions.astype(np.float32), decisions
