"""Policies evaluated inside Prophet from the true evaluation's held-out sim states (`prophrl eval --in-imagination`)."""

import json

import numpy as np
import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_trainer import report
from prophrl_trainer.evaluation import EvalSettings
from prophrl_trainer.imagined_evaluation import (ImaginedEvalSettings, evaluate_in_imagination, held_out_starts,
                                                 pearson)
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_worldmodel.configuration_judge import get_judge_config
from prophrl_worldmodel.modeling_judge import RewardJudge

SETTINGS = EvalSettings(robot="panda_sim", task="lift", episodes=3, max_steps=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagined_eval")
    smoke = make_smoke_setup(root / "setup")
    judges = {}
    for name, threshold in (("always", 0.0), ("never", 1.0), ("half", 0.5)):
        torch.manual_seed(0)
        judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32,
                                             num_frames=4)).eval()
        judges[name] = judge.with_threshold(threshold).save_pretrained(root / f"judge_{name}")
    return smoke, judges


@pytest.fixture(scope="module")
def starts():
    return held_out_starts(SETTINGS)


def test_starts_are_the_sim_states_of_the_held_out_seeds(starts):
    from prophrl_sim.arm_sim import ArmSim

    assert len(starts) == 3
    with ArmSim("panda_sim", "lift", image_width=128, image_height=128) as sim:
        observation = sim.reset(SETTINGS.first_seed + 1)
        frame = sim.render()
    start = starts[1]
    assert np.array_equal(start.context_frames[-1], frame) and start.instruction == sim.instruction
    assert np.allclose(start.ee_pose[:3], observation.ee_pose.position) and start.gripper == 0.0
    # the calibration projects the gripper into the frame, where the camera sees the arm (image centre region)
    camera = start.calibration
    point = camera.world_to_camera_matrix @ np.append(start.ee_pose[:3], 1.0)
    u, v = camera.fx * point[0] / point[2] + camera.cx, camera.fy * point[1] / point[2] + camera.cy
    assert point[2] > 0 and 0 <= u < 128 and 0 <= v < 128, (u, v)


def test_imagined_success_follows_the_judge_and_is_reproducible(setup, starts):
    smoke, judges = setup
    policies = [smoke.policy, smoke.policy]

    def run(judge):
        return evaluate_in_imagination(policies, starts, ImaginedEvalSettings(str(smoke.prophet), (str(judges[judge]),),
                                                                              chunks=2, rollouts=2),
                                       show_progress=False)

    assert run("always") == [[1.0] * 3] * 2 and run("never") == [[0.0] * 3] * 2
    half = run("half")
    assert all(v in (0.0, 0.5, 1.0) for row in half for v in row)
    assert half[0] == half[1] == run("half")[0], "same policy, same states, same seeds: same imagined success"


def test_judging_only_the_final_clip_never_counts_more_successes_than_judging_every_chunk(setup, starts, tmp_path):
    # The same rollouts either way (the world model and the policy are stepped for every rollout each chunk);
    # every_chunk also counts a success the judge saw in an earlier, shorter clip.
    smoke, _ = setup
    torch.manual_seed(0)
    judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32,
                                         num_frames=4)).eval()
    differs = False
    for threshold in np.linspace(0.3, 0.7, 9):
        path = judge.with_threshold(float(threshold)).save_pretrained(tmp_path / f"judge_{threshold:.2f}")
        every, final = (evaluate_in_imagination([smoke.policy], starts, ImaginedEvalSettings(
            str(smoke.prophet), (str(path),), chunks=3, rollouts=2, judging=judging), show_progress=False)[0]
            for judging in ("every_chunk", "final"))
        assert all(f <= e for f, e in zip(final, every)), (threshold, final, every)
        differs |= final != every
    assert differs, "no threshold where an earlier clip was judged successful and the final one not"
    with pytest.raises(ConfigError, match="judging must be one of every_chunk, final"):
        ImaginedEvalSettings(str(smoke.prophet), (str(path),), judging="last").validate()


def test_a_judge_of_replays_sampled_with_other_euler_steps_is_warned(setup, starts, tmp_path):
    import shutil
    import warnings

    from prophrl_worldmodel.judge_training import JUDGE_SUMMARY

    smoke, judges = setup
    judge = shutil.copytree(judges["half"], tmp_path / "judge_of_one_step_replays")
    (judge / JUDGE_SUMMARY).write_text('{"imagined_num_steps": 1}')
    for steps, warned in ((1, False), (2, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluate_in_imagination([smoke.policy], starts[:1], ImaginedEvalSettings(
                str(smoke.prophet), (str(judge),), chunks=1, rollouts=1, num_steps=steps), show_progress=False)
        messages = [str(w.message) for w in caught if "Euler steps" in str(w.message)]
        assert len(messages) == warned and all(f"{judge} (1)" in m and "--num-steps 2" in m for m in messages)


def test_bad_imagined_settings_are_one_clear_error(setup, tmp_path):
    smoke, judges = setup
    with pytest.raises(ConfigError, match="not a Prophet checkpoint"):
        ImaginedEvalSettings(str(tmp_path), (str(judges["half"]),)).validate()
    with pytest.raises(ConfigError, match=">= 1"):
        ImaginedEvalSettings(str(smoke.prophet), (str(judges["half"]),), chunks=0).validate()


def test_pearson_needs_three_points_with_spread():
    assert pearson([0.1, 0.2, 0.3], [0.2, 0.4, 0.6]) == pytest.approx(1.0)
    assert pearson([0.1, 0.2, 0.3], [0.6, 0.4, 0.2]) == pytest.approx(-1.0)
    assert pearson([0.1, 0.2], [0.1, 0.2]) is None and pearson([0.1, 0.2, 0.3], [0.5] * 3) is None


@pytest.mark.slow
def test_eval_cli_in_imagination_writes_imagined_beside_true_success(setup, tmp_path, capsys):
    smoke, judges = setup
    out = tmp_path / "report"
    argv = ["--policy", f"A={smoke.policy}", "--policy", f"B={smoke.policy}", "--episodes", "3", "--max-steps", "8",
            "--in-imagination", "--world-model", str(smoke.prophet), "--judge", str(judges["always"]),
            "--imagined-chunks", "1", "--imagined-rollouts", "1", "--out", str(out)]
    assert report.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for label in ("A", "B"):
        assert summary["policies"][label]["tasks"]["lift"]["imagined"] == {"mean": 1.0, "per_state": [1.0] * 3}
    lift = summary["imagined_vs_true"]["tasks"]["lift"]
    assert lift["policies"] == 2 and lift["pearson_policies"] is None  # two points: no correlation claimed
    assert "| A | lift | 100.0 |" in (out / "report.md").read_text()

    capsys.readouterr()
    assert report.main(argv[:-2] + ["--judge", "", "--out", str(tmp_path / "bad")]) == 2
    assert "--in-imagination needs --world-model and --judge" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
