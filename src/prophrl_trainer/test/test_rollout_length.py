"""How long RL's rollouts must last, read from the demonstrations (prophrl_trainer.rollout_length), and the
warning `prophrl train` gives when its rollouts end before most demonstrations finish."""

import json
import warnings

import pytest

from prophrl_trainer.rl_smoke import make_smoke_setup, write_smoke_dataset
from prophrl_trainer.rollout_length import chunks_to_finish, demonstration_steps, short_rollouts
from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer


def _with_lengths(root, lengths, success=None):
    """A smoke dataset (made when `root` holds none) whose index gives its episodes the lengths (num_samples) and
    successes listed."""
    if not (root / "index.json").is_file():
        write_smoke_dataset(root, episodes=len(lengths))
    index = json.loads((root / "index.json").read_text())
    assert len(index["episodes"]) == len(lengths)
    for i, entry in enumerate(index["episodes"]):
        entry["num_samples"] = lengths[i]
        entry["success"] = True if success is None else success[i]
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_rollouts_last_as_long_as_the_median_successful_demonstration(tmp_path):
    panda = _with_lengths(tmp_path / "panda", [50, 52, 55, 58, 92])
    ur5e = _with_lengths(tmp_path / "ur5e", [64, 68, 72, 90, 94, 97, 106, 109])
    assert demonstration_steps([panda]) == [50, 52, 55, 58, 92]
    assert chunks_to_finish(demonstration_steps([panda]), 10) == 6
    assert chunks_to_finish(demonstration_steps([ur5e]), 10) == 10        # median 92
    assert chunks_to_finish(demonstration_steps([panda, ur5e]), 10) == 8  # median 72 over both
    # failures and episodes without a length do not count; with no success marked, every episode does
    mixed = _with_lengths(tmp_path / "mixed", [40, 200, 200, "x"], success=[True, False, None, True])
    assert demonstration_steps([mixed]) == [40]
    unknown = _with_lengths(tmp_path / "unknown", [30, 70, 90], success=[None, None, False])
    assert demonstration_steps([unknown]) == [30, 70, 90]
    with pytest.raises(ValueError, match="no episode lengths"):
        chunks_to_finish([], 10)


def test_short_rollouts_are_named_with_the_chunks_that_would_do(tmp_path):
    ur5e = _with_lengths(tmp_path / "ur5e", [64, 90, 94, 106])
    assert short_rollouts([ur5e], 10, 10) is None and short_rollouts([ur5e], 12, 10) is None
    assert short_rollouts([ur5e], 6, 10) == (
        "RL's rollouts end after 6 chunks of 10 actions (60 steps), before half the recorded demonstrations had "
        "finished (median 92 steps): few rollouts can succeed, so most groups give no learning signal (set "
        "chunks_per_rollout to 10 or more)")
    assert short_rollouts([_with_lengths(tmp_path / "none", ["?", None])], 1, 10) is None


def test_prophrl_train_warns_when_its_rollouts_end_before_the_demonstrations(tmp_path):
    setup = make_smoke_setup(tmp_path / "setup")
    horizon = json.loads((setup.policy / "config.json").read_text())["horizon"]
    _with_lengths(setup.data, [3 * horizon] * 3)
    for chunks in (2, 3):
        argv = setup.argv(tmp_path / f"run{chunks}", 1, setup.rl_config(f"c{chunks}.json", chunks_per_rollout=chunks))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_trainer(TrainSettings.from_args(build_parser().parse_args(map(str, argv))), show_progress=False)
        messages = [str(w.message) for w in caught if "rollouts end after" in str(w.message)]
        assert messages == ([] if chunks == 3 else [short_rollouts([setup.data], 2, horizon)])
