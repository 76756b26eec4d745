"""Imagined rollouts whose actions are also executed in the physics sim, so each one's true success is known
(`prophrl train --world-model P --replay-in-sim ROBOT/TASK`).

The policy acts on the world model's frames only; every chunk it chooses is executed as well, open loop, by an
`ArmSim` started from the same sim seed (sim_backend.SimRollouts, through the safety filter). The sim's task check
then says whether the actions RL is about to reinforce succeed in the world they will be deployed in. That is what
the judge's reward on an imagined clip claims, so the judge's precision and recall on RL's own imagined rollouts,
the share of the advantage that goes to true successes, and imagined clips labelled by the sim (`--mine-clips`,
hard negatives for the judge, a threshold picked on them) all come from one run in imagination. With the sim's
own success as the reward (`--sim-reward`) the judge is perfect and only the world model's frames can mislead the
policy: the run between "in the sim" and "in imagination" that tells which of the two loses RL's gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prophrl_common.config_io import ConfigError
from prophrl_trainer.rollouts import RolloutBackend, RolloutGroup
from prophrl_trainer.sim_backend import SimRollouts
from prophrl_worldmodel.imagination import ImaginationStart

# The replaying sims render only the last frame of a chunk (nobody looks at it) at this size.
REPLAY_IMAGE_SIZE = 32


class ReplayedInSim:
    """RolloutBackend: `world`'s rollouts (what the policy sees), each one's chunks executed too by a sim of
    `sim` (what is true). RolloutGroup.success is the sim's task check of the replayed actions so far."""

    knows_ground_truth = True

    def __init__(self, world: RolloutBackend, sim: SimRollouts):
        if world.action_horizon != sim.action_horizon:
            raise ConfigError(f"the world model executes {world.action_horizon} actions per clip but the sim replay "
                              f"was built for {sim.action_horizon}")
        self.world, self.sim = world, sim
        self.action_horizon = world.action_horizon
        self.max_rollouts = sim.max_rollouts
        self.supports_shared_noise = bool(getattr(world, "supports_shared_noise", False))
        self._replays: dict[int, RolloutGroup] = {}

    def open(self, starts: Sequence[ImaginationStart], num_rollouts: int, seeds: Sequence[int]) -> list[RolloutGroup]:
        replays = self.sim.open(starts, num_rollouts, seeds)    # refuses starts that are not sim seeds
        try:
            groups = self.world.open(starts, num_rollouts, seeds)
        except BaseException:
            self.sim.close(replays)
            raise
        for group, replay in zip(groups, replays, strict=True):
            group.success = replay.success.copy()
            self._replays[id(group)] = replay
        return groups

    def replay_of(self, group: RolloutGroup) -> RolloutGroup:
        """The sim's copy of an open group: its arms, and their measured proprio (`.state`)."""
        return self._replays[id(group)]

    def step(self, groups: Sequence[RolloutGroup], chunks: Sequence[np.ndarray]) -> None:
        self.world.step(groups, chunks)
        replays = [self.replay_of(group) for group in groups]
        self.sim.step(replays, chunks)
        for group, replay in zip(groups, replays):
            group.success = replay.success.copy()

    def close(self, groups: Sequence[RolloutGroup]) -> None:
        replays = [self._replays.pop(id(group)) for group in groups if id(group) in self._replays]
        try:
            self.world.close(groups)
        finally:
            self.sim.close(replays)

    def shutdown(self) -> None:
        self.sim.shutdown()
