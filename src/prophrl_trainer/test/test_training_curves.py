"""The judge against the sim's own success on RL's rollouts, pooled per block of updates (training_curves)."""

import math

import pytest

from prophrl_trainer.training_curves import reward_truth_blocks, reward_truth_rows


def _update(n: int, judged: float, true: float, false_success: float) -> dict:
    return {"update": n, "rollout/success_rate": judged, "rollout/true_success_rate": true,
            "rollout/false_success_rate": false_success}


def test_blocks_pool_the_updates_into_precision_and_recall():
    """16 rollouts per update. Block 1-2: 8 + 4 judged successes, 3 + 1 of them false, 6 + 5 true successes, so
    precision (12 - 4) / 12 and recall (12 - 4) / 11. Block 3: nothing judged successful, one true success."""
    history = [_update(1, 8 / 16, 6 / 16, 3 / 16), _update(2, 4 / 16, 5 / 16, 1 / 16), _update(3, 0.0, 1 / 16, 0.0)]
    first, last = reward_truth_blocks(history, block=2)
    assert (first.first, first.last, last.first, last.last) == (1, 2, 3, 3)
    assert first.precision == pytest.approx(8 / 12) and first.recall == pytest.approx(8 / 11)
    assert first.judged == pytest.approx(12 / 32) and first.true == pytest.approx(11 / 32)
    assert math.isnan(last.precision) and last.recall == 0.0
    assert reward_truth_rows([first])[0][0] == "1-2"


def test_the_share_of_positive_advantage_on_true_successes_is_pooled_over_the_block():
    """Update 1 put 0.2 of its 0.4 positive advantage per rollout on true successes, update 2 0.3 of 0.4: the block
    0.5 / 0.8. A block of updates that did not log it shows NaN, not a number."""
    history = [{**_update(1, 0.5, 0.5, 0.0), "rollout/positive_advantage": 0.4,
                "rollout/positive_advantage_on_true_success": 0.2},
               {**_update(2, 0.5, 0.5, 0.0), "rollout/positive_advantage": 0.4,
                "rollout/positive_advantage_on_true_success": 0.3},
               _update(3, 0.5, 0.5, 0.0)]
    paid, unlogged = reward_truth_blocks(history, block=2)
    assert paid.advantage_on_true_success == pytest.approx(0.5 / 0.8)
    assert math.isnan(unlogged.advantage_on_true_success)
    assert reward_truth_rows([paid])[0][-1] == pytest.approx(0.625)


def test_updates_without_the_sims_success_are_left_out():
    """A run in imagination logs no true success: no blocks. Mixed histories pool only the updates that did."""
    imagined = [{"update": n, "rollout/success_rate": 1.0} for n in (1, 2)]
    assert reward_truth_blocks(imagined) == []
    (block,) = reward_truth_blocks([*imagined, _update(3, 0.5, 0.25, 0.25)])
    assert (block.first, block.last, block.precision, block.recall) == (3, 3, 0.5, 1.0)
    with pytest.raises(ValueError, match="block"):
        reward_truth_blocks(imagined, block=0)
