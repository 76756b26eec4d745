import json

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_trainer import report
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.train_cli import main as train_main


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    """A real (tiny) RL run directory: checkpoints + progress.jsonl."""
    root = tmp_path_factory.mktemp("report")
    setup = make_smoke_setup(root / "setup")
    config = setup.rl_config(group_size=2, states_per_update=1, chunks_per_rollout=1, ppo_epochs=1,
                             checkpoint_every=1, eval_every=1, validation_states=1)  # checkpoint selection on
    assert train_main(setup.argv(root / "run", 2, config, "--no-progress")) == 0
    return setup, root / "run"


def test_policy_specs_resolve_checkpoints_and_run_directories(rl_run):
    setup, run = rl_run
    policies = report.parse_policy_args([f"SFT={setup.policy}", f"RL={run},{run}"])
    assert policies["SFT"][0].policy_dir == setup.policy and policies["SFT"][0].run_dir is None
    assert policies["RL"][0].policy_dir.parent.name == "update_000002" and len(policies["RL"]) == 2
    assert [m["update"] for m in policies["RL"][0].progress] == [1, 2]


@pytest.mark.parametrize("spec, message", [("nolabel", "LABEL=PATH"), ("A=", "LABEL=PATH"),
                                           ("A=/nonexistent", "neither a policy checkpoint")])
def test_bad_policy_specs_fail_with_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        report.parse_policy_args([spec])


def test_over_training_runs_must_be_labelled_rl_runs(rl_run, tmp_path, capsys):
    setup, run = rl_run
    assert report.labelled_paths([f"RL={run}, {run}"], "--over-training") == {"RL": [str(run), str(run)]}
    with pytest.raises(ConfigError, match="--over-training label 'RL' given twice"):
        report.labelled_paths(["RL=a", "RL=b"], "--over-training")
    code = report.main(["--policy", f"SFT={setup.policy}", "--over-training", f"SFT={setup.policy}",
                        "--out", str(tmp_path / "report")])
    assert code == 2 and not (tmp_path / "report").exists()
    assert "is not an RL run directory with checkpoints/update_*/policy" in capsys.readouterr().err


def test_table_reports_mean_and_std_over_training_seeds():
    summary = {"robot": "panda_sim", "episodes": 10, "first_seed": 100000, "max_steps": 150, "replan_steps": 10,
               "policies": {
        "SFT": {"checkpoints": ["a"], "runs": [{"rl_updates": 0, "rl_wall_time_s": 0.0}],
                "tasks": {"lift": {"mean": 0.2, "std": 0.0}}},
        "FA-GRPO": {"checkpoints": ["b", "c", "d"], "runs": [{"rl_updates": 30, "rl_wall_time_s": 600.0}] * 3,
                    "tasks": {"lift": {"mean": float(np.mean([0.3, 0.4, 0.5])),
                                       "std": float(np.std([0.3, 0.4, 0.5], ddof=1))}}}}}
    summary["policies"]["SFT"]["tasks"]["lift"]["ci95"] = [0.057, 0.51]
    summary["policies"]["FA-GRPO"]["tasks"]["lift"]["gain"] = {"over": "SFT", "estimate": 0.2, "ci95": [-0.05, 0.45],
                                                                 "states": 10}
    table = report.markdown_table(summary)
    assert "| SFT | 20.0 ± 0.0 | [5.7, 51.0] | - | 1 | 0 | 0.0 min |" in table
    assert "| FA-GRPO | 40.0 ± 10.0 | - | +20.0 pts [-5.0, +45.0] over SFT | 3 | 30 | 10.0 min |" in table
    assert "10 action(s) executed per chunk, 150 steps max" in table.splitlines()[0]


@pytest.mark.slow
def test_eval_cli_writes_report_summary_curves_and_video(rl_run, tmp_path):
    setup, run = rl_run
    out = tmp_path / "report"
    code = report.main(["--policy", f"SFT={setup.policy}", "--policy", f"RL={run}", "--episodes", "2",
                        "--max-steps", "8", "--world-model", str(setup.prophet), "--video-chunks", "2",
                        "--over-training", f"RL={run}", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"SFT", "RL"}
    rl = summary["policies"]["RL"]
    lift = rl["tasks"]["lift"]
    assert rl["runs"][0]["rl_updates"] == 2 and lift["per_training_seed"][0]["success_rate"] in (0, 0.5, 1)
    successes = sum(lift["per_training_seed"][0]["episode_successes"][0])
    low, high = lift["ci95"]
    assert 0 <= low <= successes / 2 <= high <= 1 and high - low > 0.5      # 2 episodes: a wide interval
    sft_states = summary["policies"]["SFT"]["tasks"]["lift"]["per_state"]
    assert lift["gain"]["over"] == "SFT" and lift["gain"]["states"] == 2
    assert lift["gain"]["estimate"] == sum(lift["per_state"]) / 2 - sum(sft_states) / 2
    assert (out / "learning_curves.png").stat().st_size > 1000
    # every retained checkpoint (checkpoint_every 1: updates 1 and 2) beside the imagined success it logged
    progress = {m["update"]: m for m in report.read_progress(run)}
    points = summary["over_training"]["lift"]
    assert [p["update"] for p in points] == [1, 2]
    assert [p["imagined_rollouts"] for p in points] == [progress[1]["rollout/success_rate"],
                                                         progress[2]["rollout/success_rate"]]
    assert points[1]["true"]["estimate"] == lift["per_training_seed"][0]["success_rate"]   # same policy, same states
    assert (out / "over_training" / "lift.png").stat().st_size > 1000
    assert "imagined vs true success over training" in (out / "report.md").read_text()
    video = out / summary["videos"][0]
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    assert frames >= 2 and width == 4 * 32, (frames, width)
    assert "RL" in (out / "report.md").read_text()


@pytest.mark.slow
def test_parallel_evaluation_gives_the_sequential_outcomes_in_order(sft_lift_policy, rl_run):
    """--jobs 2: every checkpoint's episodes in spawned processes, reassembled per label and seed in order."""
    from prophrl_trainer.evaluation import EvalSettings

    setup, run = rl_run
    policies = report.parse_policy_args([f"SFT={sft_lift_policy.path}", f"RL={run},{sft_lift_policy.path}"])
    settings = EvalSettings(episodes=2, first_seed=sft_lift_policy.demo_seeds[0], max_steps=120,
                            image_size=sft_lift_policy.image_size)
    sequential = report.evaluate_all(policies, ["lift"], settings, show_progress=False)
    parallel = report.evaluate_all(policies, ["lift"], settings, show_progress=False, jobs=2)

    def outcomes(summary):
        return {label: [s["episode_successes"] for s in entry["tasks"]["lift"]["per_training_seed"]]
                for label, entry in summary["policies"].items()}

    assert outcomes(parallel) == outcomes(sequential)
    # the SFT policy solves some of its own demo states, the 2-update smoke policy (32 px world) none: the
    # order of the reassembled results is visible
    assert any(outcomes(sequential)["SFT"][0][0]) and not any(outcomes(sequential)["RL"][0][0])
    assert outcomes(sequential)["RL"][1] == outcomes(sequential)["SFT"][0]
