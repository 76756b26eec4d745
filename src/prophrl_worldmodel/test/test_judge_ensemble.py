"""Several judges scored as one: mean probability minus the disagreement penalty, on real tiny judges."""

import numpy as np
import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_trainer.rollouts import JudgeScorer
from prophrl_worldmodel.configuration_judge import get_judge_config
from prophrl_worldmodel.judge_ensemble import JudgeEnsemble, load_judges
from prophrl_worldmodel.modeling_judge import RewardJudge

INSTRUCTIONS = ["lift the red cube"] * 6


def _judge(seed: int, threshold: float) -> RewardJudge:
    torch.manual_seed(seed)
    judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32, num_frames=4))
    return judge.eval().with_threshold(threshold)


@pytest.fixture(scope="module")
def judge_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    dirs = [_judge(seed, threshold).save_pretrained(root / f"judge_{seed}")
            for seed, threshold in ((0, 0.3), (1, 0.5), (2, 0.7))]
    same_as_first = _judge(0, 0.3).save_pretrained(root / "judge_0_copy")
    return dirs, same_as_first


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for _ in INSTRUCTIONS]


def test_ensemble_score_is_the_mean_minus_the_weighted_spread_of_its_members(judge_dirs, clips):
    dirs, _ = judge_dirs
    members = np.stack([load_judges([d]).score(clips, INSTRUCTIONS).numpy() for d in dirs])
    assert members.std(0).max() > 0.01, "differently seeded judges must disagree somewhere for this test to mean much"
    for weight in (0.0, 1.0, 3.0):
        ensemble = load_judges(dirs, disagreement=weight)
        assert isinstance(ensemble, JudgeEnsemble) and ensemble.threshold == pytest.approx(0.5)
        expected = np.clip(members.mean(0) - weight * members.std(0), 0.0, 1.0)
        np.testing.assert_allclose(ensemble.score(clips, INSTRUCTIONS).numpy(), expected, atol=1e-6)
    penalised = load_judges(dirs, disagreement=1.0).score(clips, INSTRUCTIONS).numpy()
    assert (penalised <= members.mean(0) + 1e-6).all() and (penalised < members.mean(0) - 1e-4).any()


def test_judges_that_agree_are_not_penalised_and_one_judge_is_itself(judge_dirs, clips):
    dirs, same_as_first = judge_dirs
    single = load_judges([dirs[0]])
    assert isinstance(single, RewardJudge)
    agreeing = load_judges([dirs[0], same_as_first], disagreement=5.0)
    np.testing.assert_allclose(agreeing.score(clips, INSTRUCTIONS).numpy(), single.score(clips, INSTRUCTIONS).numpy(),
                               atol=1e-6)


def test_the_rl_scorer_decides_success_on_the_ensembles_score_and_threshold(judge_dirs, clips):
    dirs, _ = judge_dirs
    scorer = JudgeScorer.from_pretrained(dirs, "cpu", disagreement=1.0)
    probs, success = scorer.score(clips, INSTRUCTIONS, [None] * len(clips))
    expected = load_judges(dirs, disagreement=1.0).score(clips, INSTRUCTIONS).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert scorer.threshold == pytest.approx(0.5) and (success == (probs >= 0.5)).all()


def test_bad_ensembles_are_one_clear_error(judge_dirs, tmp_path):
    dirs, _ = judge_dirs
    with pytest.raises(ConfigError, match="given twice"):
        load_judges([dirs[0], dirs[0]])
    with pytest.raises(ConfigError, match="no judge"):
        load_judges([])
    with pytest.raises(ConfigError, match=">= 0"):
        load_judges(dirs, disagreement=-1.0)
    with pytest.raises(ConfigError, match="does not exist"):
        load_judges([dirs[0], tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="at least 2"):
        JudgeEnsemble([load_judges([dirs[0]])])
