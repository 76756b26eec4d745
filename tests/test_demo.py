"""`prophrl demo` end to end at toy budgets: every stage leaves its artefact, and a rerun resumes."""

import json
import os
import subprocess
import sys

import pytest

from prophrl_common.testing import isolate_ros_domain

TOY_BUDGETS = ["--demos", "2", "--play-episodes", "2", "--sft-steps", "10", "--prophet-vae-steps", "10",
               "--prophet-steps", "10", "--judge-steps", "10", "--rl-updates", "1", "--eval-episodes", "1"]


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_demo_runs_every_stage_and_resumes_from_its_outputs(tmp_path):
    env = os.environ.copy()
    isolate_ros_domain()
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "prophrl.cli", "demo", "--out", str(out), *TOY_BUDGETS]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    assert len([p for p in (out / "bags").iterdir() if p.is_dir()]) == 2
    assert len([p for p in (out / "play_bags").iterdir() if p.is_dir()]) == 2
    for artefact in ("dataset/index.json", "dataset_play/index.json", "policy_sft/model.safetensors",
                     "prophet/model.safetensors", "judge/model.safetensors", "report/report.md"):
        assert (out / artefact).is_file(), artefact
    prophet_config = json.loads((out / "prophet" / "prophet_config.json").read_text())
    assert prophet_config["name"] == "tiny_32px"
    assert prophet_config["frames_per_clip"] * prophet_config["actions_per_frame"] == 10  # the policy's horizon
    judge_summary = json.loads((out / "judge" / "summary.json").read_text())
    assert judge_summary["imagined_from"] == str(out / "prophet")  # trained on Prophet's replays too
    assert judge_summary["config"]["image_size"] == prophet_config["image_size"]
    progress = (out / "rl_fa_grpo_flowscale" / "progress.jsonl").read_text().splitlines()
    assert len(progress) == 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["policies"]) == {"SFT", "FA-GRPO+FlowScale"}
    assert summary["replan_steps"] == 10 and summary["episodes"] == 1
    assert "true success %" in first.stdout and "FA-GRPO+FlowScale" in first.stdout

    # A rerun finds every stage's output and redoes none of them.
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("(cached)") == 9, second.stdout
