"""Whether a starting policy leaves GRPO something to learn, read from its own labelled episodes.

A GRPO group teaches only when some of its rollouts succeed and some fail: the advantages of a group whose rollouts
all share one reward are zero. A policy that never succeeds (the Panda stack after the demo's 50 demonstrations
and 2000 SFT steps: 0 of 30 episodes) gives RL no success of the real task to learn from, and in imagination
every success the judge reports is then one of its mistakes; a policy that always succeeds leaves nothing to gain.
"""

from __future__ import annotations

from pathlib import Path

from prophrl_data.shards import EpisodeDataset


def groups_with_signal(success_rate: float, group_size: int) -> float:
    """The share of groups of `group_size` rollouts expected to hold both a success and a failure when each rollout
    succeeds independently with probability `success_rate`."""
    return 1.0 - success_rate ** group_size - (1.0 - success_rate) ** group_size


def no_learning_signal(dataset_dir: str | Path, group_size: int, least_share: float = 0.1) -> str | None:
    """Why RL from the policy whose labelled episodes `dataset_dir` holds would learn little: fewer than
    `least_share` of its groups of `group_size` rollouts are expected to hold a success and a failure, judged by the
    episodes' success rate. None when enough would, or no episode is labelled."""
    labels = [entry["success"] for entry in EpisodeDataset(dataset_dir).entries
              if isinstance(entry.get("success"), bool)]
    if not labels:
        return None
    successes, episodes = sum(labels), len(labels)
    share = groups_with_signal(successes / episodes, group_size)
    if share >= least_share:
        return None
    outcome = ("nothing left to gain (a weaker starting policy, from fewer demonstrations, or a harder task "
               "leaves RL room to show a gain)" if successes * 2 > episodes else
               "no success of the task to learn from (start from a stronger policy: more demonstrations or SFT "
               "steps)")
    return (f"the policy succeeded in {successes} of its {episodes} labelled episodes ({dataset_dir}): about "
            f"{100 * share:.1f} % of RL's groups of {group_size} rollouts would hold both a success and a failure, "
            f"so RL has {outcome}")
