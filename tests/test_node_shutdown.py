"""Ctrl-C of a launched system: every node process exits 0, without a traceback.

All node processes run in one process group, as under `ros2 launch` in a terminal; once every node has
announced that it is ready, the group gets SIGINT (the terminal), each process a second SIGINT right
after (launch's own), and SIGTERM if it is still running 5 s later (launch's escalation). The sim runs
and the policy node infers meanwhile, so the signals land in the middle of callbacks and teardowns.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import rclpy
import torch

from prophrl_common.startup import ReadyWatcher, StartupTimeout

BIN = Path(sys.executable).parent
# What a clean stop never prints: a traceback, an error in a finaliser (MuJoCo's EGL renderer), an rclpy task
# whose exception nobody read, a node still publishing after its context was shut down.
DIRTY = ("Traceback", "KeyboardInterrupt", "Exception ignored", "never retrieved", "Failed to publish",
         "context is invalid")


def _policy_checkpoint(root: Path) -> Path:
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import VLAPolicy

    torch.manual_seed(0)
    return VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, image_size=32, horizon=4)).save_pretrained(
        root / "policy")


def _nodes(root: Path, policy: Path) -> dict[str, list[str]]:
    """Node name -> (console script, ROS arguments)."""
    return {
        "sim": ["sim_node", "-p", "image_width:=64", "-p", "image_height:=64"],
        "scripted_expert": ["scripted_expert_node"],
        "executor_node": ["executor_node"],
        "recorder_node": ["recorder_node", "-p", f"output_dir:={root / 'bags'}"],
        "collector": ["collector_node"],
        "policy_node": ["policy_node", "-p", f"checkpoint_path:={policy}", "-p", "replan_period_s:=0.1",
                        "-p", "action_chunk_topic:=/test/policy_chunk"],
        # waits for an Imagine server that never comes: its worker thread is inside wait_for_server
        "trainer_node": ["trainer_node", "-p", f"policy_checkpoint:={policy}", "-p",
                         f"dataset_dirs:=[{root}]", "-p", f"out_dir:={root / 'run'}", "-p",
                         "imagination_actions:=[/nowhere/imagine]"],
        "teleop": ["teleop_node", "-p", "device:=keyboard"],
    }


@pytest.mark.slow
def test_ctrl_c_stops_every_node_with_exit_0_and_no_traceback(tmp_path):
    policy = _policy_checkpoint(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    procs: dict[str, tuple[subprocess.Popen, object]] = {}

    def output(name):
        log = procs[name][1]
        log.seek(0)
        return log.read()

    group = 0
    try:
        for name, (script, *ros_args) in _nodes(tmp_path, policy).items():
            log = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen([str(BIN / script), "--ros-args", *ros_args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE, env=env, process_group=group)
            group = group or proc.pid
            procs[name] = (proc, log)

        rclpy.init()
        observer = rclpy.create_node("shutdown_test_observer")
        watcher = ReadyWatcher(observer)
        try:
            def check():
                dead = {n: p.returncode for n, (p, _) in procs.items() if p.poll() is not None}
                if dead:
                    raise StartupTimeout(f"exited before the test signalled them: {dead}\n"
                                         + "\n".join(f"--- {n}\n{output(n)[-3000:]}" for n in dead))
            watcher.wait(procs, 300.0, spin_once=lambda t: rclpy.spin_once(observer, timeout_sec=t), check=check,
                         waiting_for="test")
            time.sleep(1.0)  # the sim steps, the policy infers, the trainer waits for its server
        except StartupTimeout as exc:
            pytest.fail(f"{exc}\n" + "\n".join(f"--- {n}\n{output(n)[-2000:]}" for n in watcher.missing(procs)))
        finally:
            observer.destroy_node()
            rclpy.shutdown()

        os.killpg(group, signal.SIGINT)           # Ctrl-C in the terminal
        time.sleep(0.01)
        for proc, _ in procs.values():            # launch's own SIGINT to each process
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs.values()):
            time.sleep(0.1)
        escalated = [name for name, (proc, _) in procs.items() if proc.poll() is None]
        for name in escalated:                    # launch: SIGTERM after sigterm_timeout
            procs[name][0].send_signal(signal.SIGTERM)
        for name, (proc, _) in procs.items():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)   # run_node: every thread's stack to the log
                time.sleep(2.0)
                pytest.fail(f"{name} still runs 60 s after SIGTERM; its output and stacks:\n{output(name)[-8000:]}")
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    problems = []
    for name, (proc, _) in procs.items():
        out = output(name)
        dirty = [word for word in DIRTY if word in out]
        if proc.returncode != 0 or dirty:
            problems.append(f"--- {name}: exit {proc.returncode}, {dirty}\n{out[-3000:]}")
    assert not problems, f"not a clean Ctrl-C (still running 5 s after SIGINT: {escalated}):\n" + "\n".join(problems)
