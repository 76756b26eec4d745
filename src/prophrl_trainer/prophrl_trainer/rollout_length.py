"""How long an RL rollout must last for its task to be done in it, read from the demonstrations.

A rollout that ends before the task can be finished earns no success and gives GRPO's groups nothing to compare:
the scripted Panda lift finishes in about 55 control steps, the UR5e's in about 90, so the 6 chunks of 10 actions
that suit the Panda leave the UR5e's rollouts almost without a success (measured in the physics sim with the
sim's own reward: 0.3 % of the SFT policy's 6-chunk rollouts succeed, 22 % of its 12-chunk ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prophrl_data.shards import EpisodeDataset


def demonstration_steps(dataset_dirs: Sequence[str | Path]) -> list[int]:
    """The control steps each successful episode of the datasets took (every episode's where none is marked
    successful); episodes whose index gives no length are left out."""
    entries = [entry for directory in dataset_dirs for entry in EpisodeDataset(directory).entries]
    successful = [entry for entry in entries if entry.get("success") is True]
    return [entry["num_samples"] for entry in (successful or entries)
            if isinstance(entry.get("num_samples"), int) and entry["num_samples"] > 0]


def chunks_to_finish(steps: Sequence[int], horizon: int) -> int:
    """The chunks of `horizon` actions a rollout needs to last as long as the median of `steps` (episode lengths,
    demonstration_steps)."""
    if not steps:
        raise ValueError("no episode lengths to measure a demonstration on")
    return max(1, math.ceil(float(np.median(steps)) / horizon))


def short_rollouts(dataset_dirs: Sequence[str | Path], chunks_per_rollout: int, horizon: int) -> str | None:
    """Why RL's rollouts would end before most demonstrations of the datasets finish their task (None when they
    last as long as the median demonstration, or no episode gives its length)."""
    steps = demonstration_steps(dataset_dirs)
    if not steps or chunks_per_rollout >= (needed := chunks_to_finish(steps, horizon)):
        return None
    return (f"RL's rollouts end after {chunks_per_rollout} chunks of {horizon} actions ({chunks_per_rollout * horizon} "
            f"steps), before half the recorded demonstrations had finished (median {float(np.median(steps)):.0f} "
            f"steps): few rollouts can succeed, so most groups give no learning signal (set chunks_per_rollout to "
            f"{needed} or more)")
