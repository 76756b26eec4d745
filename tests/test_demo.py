"""`prophrl demo` end to end at toy budgets: interrupted in every stage it resumes, every stage leaves its
artefact, and a rerun redoes nothing."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from prophrl_common.testing import isolate_ros_domain, swallowed_ctrl_c
from prophrl_worldmodel.pretrained import PRETRAINED_PROPHETS

TOY_BUDGETS = ["--demos", "2", "--play-episodes", "2", "--sft-steps", "10", "--policy-episodes", "1",
               "--prophet-vae-steps", "10", "--prophet-steps", "10", "--judge-steps", "10", "--rl-updates", "1",
               "--eval-episodes", "1"]
STAGES = ("1.", "1b.", "2.", "2b.", "3.", "3b.", "3c.", "4.", "5.", "6.", "7.")


def _bag_started(directory):
    return lambda: directory.is_dir() and any(p.is_dir() for p in directory.iterdir())


def _interrupt_in_stage(argv, env, stage, ready, timeout=240):
    """Run the demo until `stage` has begun (and `ready()` holds), then Ctrl-C it (SIGINT to its process group,
    as a terminal does). Returns (exit status, output)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, started = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"== {stage} ") and "(cached)" not in line:
                started.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not (started.is_set() and ready()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.is_set() and proc.poll() is None, f"stage {stage} never ran:\n{''.join(lines)[-3000:]}"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    return proc.returncode, "".join(lines)


def test_a_swallowed_ctrl_c_stops_the_demo_before_its_next_stage(capsys):
    """Regression (CI): a Ctrl-C in stage 3 landed while torch's C start-up imported numpy, which swallowed it;
    the demo ran every later stage and exited 0."""
    from prophrl.demo import run_stage
    from prophrl_common.cli_errors import EXIT_INTERRUPTED, run_reporting_errors, sigint_count

    ran = []

    def demo(swallow_before_a_stage=False):
        seen = sigint_count()
        if swallow_before_a_stage:
            swallowed_ctrl_c()
        run_stage(lambda: ran.append("1."), seen)
        run_stage(swallowed_ctrl_c, seen)
        run_stage(lambda: ran.append("4."), seen)
        return 0
    assert run_reporting_errors("prophrl demo", demo) == EXIT_INTERRUPTED
    assert ran == ["1."] and capsys.readouterr().err == "prophrl demo: interrupted\n"
    ran.clear()   # one swallowed between stages: the next stage does not start
    assert run_reporting_errors("prophrl demo", lambda: demo(swallow_before_a_stage=True)) == EXIT_INTERRUPTED
    assert ran == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_resumes_from_an_interruption_in_any_stage_and_runs_every_stage(tmp_path):
    """Regression: a rerun after an interrupted collection died with a BagError traceback."""
    env = os.environ.copy()
    isolate_ros_domain()
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "prophrl.cli", "demo", "--out", str(out), *TOY_BUDGETS]
    ready = {"1.": _bag_started(out / "bags"), "1b.": _bag_started(out / "play_bags"),
             "3b.": _bag_started(out / "policy_bags")}
    for stage in STAGES:
        code, output = _interrupt_in_stage(argv, env, stage, ready.get(stage, lambda: True))
        # 130, or killed by the SIGINT itself (a shell shows 130 for both): a Ctrl-C'd process, one line, no traceback
        assert code in (130, -signal.SIGINT) and "prophrl demo: interrupted" in output and "Traceback" not in output, \
            f"stage {stage}: exit {code}\n{output[-3000:]}"
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    assert len([p for p in (out / "bags").iterdir() if p.is_dir()]) == 2
    assert len([p for p in (out / "play_bags").iterdir() if p.is_dir()]) == 2
    assert len([p for p in (out / "policy_bags").iterdir() if p.is_dir()]) == 1
    for artefact in ("dataset/index.json", "dataset_play/index.json", "dataset_policy/index.json",
                     "policy_sft/model.safetensors",
                     "prophet/model.safetensors", "judge/model.safetensors", "report/report.md"):
        assert (out / artefact).is_file(), artefact
    prophet_config = json.loads((out / "prophet" / "prophet_config.json").read_text())
    prophet_summary = json.loads((out / "prophet" / "training_summary.json").read_text())
    # the shipped pretrained Prophet, adapted to the demo's own episodes (demonstrations and play)
    assert prophet_summary["phase"] == "adapt" and prophet_summary["checkpoint"] == str(PRETRAINED_PROPHETS[
        "sim_tiny_32px"].path)
    assert prophet_summary["datasets"] == [str(out / "dataset"), str(out / "dataset_play")]
    assert prophet_config["name"] == "tiny_32px_start_frame" and prophet_config["flow_source"] == "start_frame"
    assert prophet_config["frames_per_clip"] * prophet_config["actions_per_frame"] == 10  # the policy's horizon
    judge_summary = json.loads((out / "judge" / "summary.json").read_text())
    assert judge_summary["imagined_from"] == str(out / "prophet")  # trained on Prophet's replays too
    # ... and on the SFT policy's own sim episodes (hard negatives), which the Prophet does not train on
    assert judge_summary["datasets"] == [str(out / d) for d in ("dataset", "dataset_play", "dataset_policy")]
    policy_episodes = json.loads((out / "dataset_policy" / "index.json").read_text())["episodes"]
    assert len(policy_episodes) == 1 and policy_episodes[0]["success"] in (True, False)
    # ... sampled with the Euler steps RL imagines with (the world model's own: imagination_steps 0)
    assert judge_summary["imagined_num_steps"] == prophet_config["num_inference_steps"] == 1
    assert judge_summary["config"]["image_size"] == prophet_config["image_size"]
    progress = (out / "rl_fa_grpo_flowscale" / "progress.jsonl").read_text().splitlines()
    assert len(progress) == 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["policies"]) == {"SFT", "FA-GRPO+FlowScale"}
    assert summary["replan_steps"] == 10 and summary["episodes"] == 1
    assert "true success %" in first.stdout and "FA-GRPO+FlowScale" in first.stdout
    # One episode of the SFT policy succeeds in none or all of them: the demo says RL has little to learn, under
    # the SFT stages and again under the result
    weak = f"warning: SFT: the policy succeeded in {int(policy_episodes[0]['success'])} of its 1 labelled episodes"
    assert first.stdout.count(weak) == 2 and first.stdout.rindex(weak) > first.stdout.index("true success %"), \
        first.stdout[-3000:]

    # A rerun finds every stage's output and redoes none of them.
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("(cached)") == len(STAGES), second.stdout
    assert second.stdout.count(weak) == 2, second.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("robot,task,prophet_from", [("ur5e_sim", "lift", "sim_tiny_32px"),
                                                     ("panda_sim", "stack", "scratch")])
def test_demo_runs_the_loop_for_another_robot_and_task(tmp_path, robot, task, prophet_from):
    """`prophrl demo --robot/--task`: every stage works on that pair, and its outputs are that pair's; its
    Prophet is the shipped one adapted, or (--prophet-from scratch) one trained on the demo's episodes alone."""
    env = os.environ.copy()
    isolate_ros_domain()
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "prophrl.cli", "demo", "--out", str(out), "--robot", robot, "--task", task,
            "--prophet-from", prophet_from, *TOY_BUDGETS]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    episodes = json.loads((out / "dataset" / "index.json").read_text())
    assert episodes["robot"] == robot
    assert {e["task"] for e in episodes["episodes"]} == {task} and all(e["success"] for e in episodes["episodes"])
    # RL's rollouts last as long as the median demonstration: 2 here, so their mean length in chunks of 10
    lengths = [e["num_samples"] for e in episodes["episodes"]]
    assert json.loads((out / "rl_config.json").read_text())["chunks_per_rollout"] == -(-sum(lengths) // 20), lengths
    assert json.loads((out / "policy_sft" / "embodiment.json").read_text())["robot"] == robot
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["robot"] == robot
    assert all(set(entry["tasks"]) == {task} for entry in summary["policies"].values())
    assert f"ProphRL demo: {robot} / {task}" in run.stdout
    # stage 6 trains on torch's default threads (one per physical core), not on one
    default_threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                                     capture_output=True, text=True, check=True).stdout.strip()
    assert f"x {default_threads} torch thread(s)" in run.stdout, run.stdout[-3000:]
    prophet_summary = json.loads((out / "prophet" / "training_summary.json").read_text())
    assert prophet_summary["phase"] == ("pretrain" if prophet_from == "scratch" else "adapt")
    assert json.loads((out / "prophet" / "prophet_config.json").read_text())["name"] == "tiny_32px_start_frame"


def test_demo_checks_the_prophet_it_would_adapt_before_any_work(tmp_path):
    """--prophet-from that is not a Prophet, or whose clip is not one policy chunk: one error line, exit 2, and
    nothing collected (the check comes before stage 1)."""
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet

    long_clips = Prophet(get_prophet_config("tiny_32px_start_frame", frames_per_clip=4)).save_pretrained(
        tmp_path / "long_clips")
    for source, message in ((tmp_path / "absent", "not a Prophet checkpoint"),
                            (long_clips, "its clips are 20 actions long, the tiny policy's chunks 10")):
        out = tmp_path / "demo"
        run = subprocess.run([sys.executable, "-m", "prophrl.cli", "demo", "--out", str(out), "--prophet-from",
                              str(source)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not out.exists()
