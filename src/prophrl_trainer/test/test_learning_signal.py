"""Whether a starting policy's labelled episodes leave GRPO's groups a success and a failure to compare
(prophrl_trainer.learning_signal)."""

import json

import pytest

from prophrl_trainer.learning_signal import groups_with_signal, no_learning_signal
from prophrl_trainer.rl_smoke import write_smoke_dataset


def _labelled(root, success):
    """A smoke dataset whose episodes are labelled with the successes listed."""
    write_smoke_dataset(root, episodes=len(success))
    index = json.loads((root / "index.json").read_text())
    for entry, label in zip(index["episodes"], success, strict=True):
        entry["success"] = label
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_groups_with_a_success_and_a_failure():
    assert groups_with_signal(0.5, 2) == pytest.approx(0.5)            # SF and FS of SS, SF, FS, FF
    assert groups_with_signal(0.1, 8) == pytest.approx(1 - 0.1 ** 8 - 0.9 ** 8)  # 0.5695
    assert groups_with_signal(0.0, 8) == 0.0 and groups_with_signal(1.0, 8) == 0.0


def test_a_policy_that_never_or_always_succeeds_is_named_and_one_that_sometimes_does_is_not(tmp_path):
    never = _labelled(tmp_path / "never", [False, False, False, None])
    assert no_learning_signal(never, 8) == (
        f"the policy succeeded in 0 of its 3 labelled episodes ({never}): about 0.0 % of RL's groups of 8 rollouts "
        "would hold both a success and a failure, so RL has no success of the task to learn from (start from a "
        "stronger policy: more demonstrations or SFT steps)")
    always = _labelled(tmp_path / "always", [True, True, True, True])
    assert no_learning_signal(always, 8).startswith(
        f"the policy succeeded in 4 of its 4 labelled episodes ({always}): about 0.0 % of RL's groups of 8 rollouts "
        "would hold both a success and a failure, so RL has nothing left to gain")
    # 1 success in 4: 1 - 0.25^8 - 0.75^8 = 90 % of the groups hold both
    assert no_learning_signal(_labelled(tmp_path / "some", [True, False, False, False]), 8) is None
    # 1 in 20 and groups of 2: 1 - 0.05^2 - 0.95^2 = 9.5 %, under the 10 % asked for
    rare = _labelled(tmp_path / "rare", [True] + [False] * 19)
    assert "about 9.5 % of RL's groups of 2 rollouts" in no_learning_signal(rare, 2)
    assert no_learning_signal(rare, 2, least_share=0.09) is None
    assert no_learning_signal(_labelled(tmp_path / "unlabelled", [None, None]), 8) is None
