"""Launch files, profiles and `prophrl up` (a real supervisor of real node processes)."""

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rclpy
from rclpy.node import Node

from prophrl.profiles import available_profiles, load_profile, parse_overrides
from prophrl.up import find_entry_point, node_command
from prophrl_common.config_io import ConfigError
from prophrl_common.paths import config_dir, launch_dir
from prophrl_common.testing import spin_until

LAUNCH_FILES = sorted(launch_dir().glob("*.launch.py"))


def _launch_profile_name(path: Path) -> str:
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions, f"{path.name} has no generate_launch_description()"
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["PROFILE"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} does not name its PROFILE")


def test_the_documented_launch_files_exist():
    assert {"real_robot.launch.py", "sim.launch.py", "imagination.launch.py", "train.launch.py"} <= {p.name for p in LAUNCH_FILES}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_existing_executables_and_configs(path):
    profile = load_profile(_launch_profile_name(path))
    for spec in profile.nodes:
        entry = find_entry_point(spec.package, spec.executable)  # raises if the console script is missing
        assert entry.load(), f"{spec.package}/{spec.executable} does not resolve"
        assert spec.params_file is None or spec.params_file.is_file()
        assert spec.params_file is None or spec.params_file.is_relative_to(config_dir())


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads_and_resolves(name):
    profile = load_profile(name)
    for spec in profile.nodes:
        argv = node_command(spec)
        assert argv[argv.index("-r") + 1] == f"__node:={spec.name}"


def test_profile_arguments_substitute_with_types():
    profile = load_profile("sim", {"robot": "ur5e_sim", "seed": "7"})
    params = {spec.name: dict(spec.parameters) for spec in profile.nodes}
    assert params["sim"]["robot"] == "ur5e_sim" and params["sim"]["seed"] == 7
    assert params["executor"]["robot"] == "ur5e_sim"


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("text, message", [
    ("nodes: []\n", "non-empty list"),
    ("nodes:\n  - {name: a, package: p}\n", "'executable' is required"),
    ("nodes:\n  - {name: a, package: p, executable: e, colour: red}\n", "unknown key"),
    ("nodes:\n  - {name: a-b, package: p, executable: e}\n", "not a valid ROS node name"),
    ("nodes:\n  - {name: a, package: p, executable: e}\n  - {name: a, package: p, executable: e}\n", "duplicate"),
    ("nodes:\n  - {name: a, package: p, executable: e, params_file: nodes/none.yaml}\n", "does not exist"),
    ("nodes:\n  - {name: a, package: p, executable: e, parameters: {x: '${nope}'}}\n", "not a declared argument"),
    ("nodes: [\n", "not valid YAML"),
    ("nodes:\n  - {name: a, package: p, executable: e, required: false, ends_profile: true}\n", "is required"),
    ("nodes:\n  - {name: a, package: p, executable: e, ends_profile: 'yes'}\n", "must be true or false"),
])
def test_bad_profiles_fail_with_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_write(tmp_path, text))


def test_unknown_override_and_bad_syntax_are_rejected():
    with pytest.raises(ConfigError, match="has no argument 'colour'"):
        load_profile("sim", {"colour": "red"})
    with pytest.raises(ConfigError, match="expected name:=value"):
        parse_overrides(["robot=ur5e"])
    with pytest.raises(ConfigError, match="no executable 'nope'"):
        find_entry_point("prophrl_policy", "nope")


RELAY_PROFILE = """
description: two relay nodes
arguments:
  exit_after: {default: "0.0"}
nodes:
  - {name: relay_a, package: prophrl_common, executable: interface_test_node, required: false}
  - {name: relay_b, package: prophrl_common, executable: interface_test_node, parameters: {exit_after_s: "${exit_after}"}}
"""


def _start_up(profile_path, *overrides):
    return subprocess.Popen([sys.executable, "-m", "prophrl.cli", "up", str(profile_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture()
def graph_node():
    rclpy.init()
    node = Node("profile_test_observer")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _wait_for_nodes(node, names, timeout=30.0):
    return spin_until(node, lambda: set(names) <= set(node.get_node_names()), timeout)


def _descendants(pid):
    return psutil.Process(pid).children(recursive=True)


def _assert_all_gone(processes, timeout=10.0):
    _gone, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"orphaned processes: {[p.pid for p in alive]}"


def test_up_starts_nodes_prefixes_logs_and_sigterm_stops_all(tmp_path, graph_node):
    up = _start_up(_write(tmp_path, RELAY_PROFILE))
    try:
        assert _wait_for_nodes(graph_node, ["relay_a", "relay_b"]), "nodes never appeared in the graph"
        children = _descendants(up.pid)
        assert len(children) >= 2
        # a node is in the graph a moment before it logs: stop only once both have logged (prefixed)
        lines = []
        while not all(any(line.startswith(f"[{name}] ") for line in lines) for name in ("relay_a", "relay_b")):
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=20)
        out = "".join(lines) + rest
    finally:
        up.kill()
    assert up.returncode == 0, out
    assert "[relay_a] " in out and "[relay_b] " in out and "ready" in out
    _assert_all_gone(children)


def test_up_exits_nonzero_when_a_required_node_dies(tmp_path):
    up = _start_up(_write(tmp_path, RELAY_PROFILE), "exit_after:=1.0")
    try:
        out, _ = up.communicate(timeout=30)
    finally:
        up.kill()
    assert up.returncode == 3, out
    assert "required node relay_b exited with code 3" in out


def test_up_exits_0_when_the_node_that_ends_the_profile_finishes(tmp_path):
    """Regression: `prophrl up train` exited 1 when its training run finished."""
    profile = RELAY_PROFILE.replace('parameters: {exit_after_s: "${exit_after}"}',
                                    'ends_profile: true, parameters: {exit_after_s: "${exit_after}", exit_code: "${code}"}')
    profile = profile.replace('exit_after: {default: "0.0"}', 'exit_after: {default: "0.0"}\n  code: {default: "0"}')
    path = _write(tmp_path, profile)
    for code, status, line in ((0, 0, "relay_b finished; stopping the profile"),
                               (3, 3, "required node relay_b exited with code 3")):
        up = _start_up(path, "exit_after:=1.0", f"code:={code}")
        try:
            out, _ = up.communicate(timeout=60)
        finally:
            up.kill()
        assert up.returncode == status and line in out, out


def test_children_die_with_a_killed_supervisor(tmp_path, graph_node):
    up = _start_up(_write(tmp_path, RELAY_PROFILE))
    try:
        assert _wait_for_nodes(graph_node, ["relay_a", "relay_b"])
        children = _descendants(up.pid)
        os.kill(up.pid, signal.SIGKILL)
        up.wait(10)
    finally:
        up.kill()
        up.stdout.close()
    _assert_all_gone(children)


def test_up_reports_config_errors_without_starting_anything(tmp_path):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "prophrl.cli", "up", "sim", "robot:=nope", "colour:=red"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "has no argument 'colour'" in result.stderr
    assert time.monotonic() - start < 20


# The sim profile's episode runs at this fraction of real time: as on a machine too busy to step the sim in real
# time, which is where an expert timing its stages on the wall clock instead of the sim's stamps never succeeded.
SLOW_SIM = 0.125


@pytest.mark.slow
def test_up_sim_profile_closes_the_loop_on_a_slow_sim_and_sigterm_leaves_no_process(graph_node):
    """expert -> executor (safety filter) -> sim solves the task on its own, also when the sim runs far slower than
    real time. The budget is sim time (the ee pose stamps), so a busy machine only makes the test take longer."""
    from geometry_msgs.msg import PoseArray, PoseStamped

    from prophrl_msgs.msg import EpisodeEvent

    events, stamps, cube_z = [], [], []
    graph_node.create_subscription(EpisodeEvent, "/prophrl/episode", events.append, 10)
    graph_node.create_subscription(PoseStamped, "/prophrl/ee_pose",
                                   lambda m: stamps.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9), 10)
    graph_node.create_subscription(PoseArray, "/prophrl/sim/object_poses",
                                   lambda m: cube_z.append(m.poses[0].position.z), 10)

    def sim_seconds() -> float:
        return stamps[-1] - stamps[0] if stamps else 0.0

    def succeeded() -> bool:
        return any(e.event == EpisodeEvent.SUCCESS for e in events)

    up = _start_up("sim", "robot:=ur5e_sim", "seed:=3", f"real_time_factor:={SLOW_SIM}")
    out, children = "", []
    try:
        assert _wait_for_nodes(graph_node, ["sim", "executor", "expert"], timeout=120), "sim profile nodes missing"
        children = _descendants(up.pid)
        # The expert needs about 3 s of sim time; 20 s of it means it is lost. 600 s of wall time only bounds a hang.
        spin_until(graph_node, lambda: succeeded() or sim_seconds() > 20.0, 600)
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            out, _ = up.communicate()
    assert succeeded(), (f"no SUCCESS after {sim_seconds():.1f} s of sim time ({len(stamps)} ee poses); events "
                         f"{[(e.event, e.message) for e in events]}; cube z {cube_z[::20]}\nnode logs:\n{out[-4000:]}")
    assert up.returncode == 0, out[-3000:]
    assert "[sim] " in out and "[executor] " in out and "[expert] " in out
    _assert_all_gone(children)


# The share of the start distance to the cube the policy node must close. On a loaded 2-core machine (CI) the
# executor's watchdog holds the arm between late chunks and the policy's ee pose goes stale, which takes the
# 4-demo policy off its memorised path: there it closed 58-64 % of the distance (0.36-0.42 of the start left),
# so 0.35 failed about one run in three; undisturbed it reaches the cube.
CLOSE_IN = 0.5


@pytest.mark.slow
def test_sim_policy_profile_policy_node_moves_the_arm_to_the_object(graph_node, sft_lift_policy):
    """The unchanged policy node (real_robot's) drives the sim through the executor over DDS."""
    from geometry_msgs.msg import PoseArray, PoseStamped

    from prophrl_msgs.msg import ActionChunk, EpisodeEvent
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.evaluation import EvalSettings, evaluate_policy

    # The 4-demo policy memorises its demos' states, not all of them: run the profile on one it solves in process.
    in_process = evaluate_policy(VLAPolicy.from_pretrained(sft_lift_policy.path),
                                 EvalSettings(episodes=len(sft_lift_policy.demo_seeds),
                                              first_seed=sft_lift_policy.demo_seeds[0], max_steps=150,
                                              image_size=sft_lift_policy.image_size), show_progress=False)
    assert any(in_process.successes), in_process
    seed = sft_lift_policy.demo_seeds[in_process.successes.index(True)]
    ee, cube, chunks, events = [], [], [], []
    graph_node.create_subscription(PoseStamped, "/prophrl/ee_pose",
                                   lambda m: ee.append([m.pose.position.x, m.pose.position.y, m.pose.position.z]), 10)
    graph_node.create_subscription(PoseArray, "/prophrl/sim/object_poses",
                                   lambda m: cube.append([m.poses[0].position.x, m.poses[0].position.y,
                                                          m.poses[0].position.z]), 10)
    graph_node.create_subscription(ActionChunk, "/prophrl/action_chunk", chunks.append, 10)
    graph_node.create_subscription(EpisodeEvent, "/prophrl/episode", events.append, 10)
    up = _start_up("sim_policy", f"checkpoint:={sft_lift_policy.path}", f"seed:={seed}",
                   f"image_size:={sft_lift_policy.image_size}")
    try:
        assert spin_until(graph_node, lambda: ee and cube, 90), "sim did not publish poses"
        start = np.linalg.norm(np.subtract(ee[-1], cube[-1]))
        assert spin_until(graph_node, lambda: len(chunks) >= 5, 60), "policy node published no chunks"
        closest = [start]
        spin_until(graph_node, lambda: closest.append(np.linalg.norm(np.subtract(ee[-1], cube[-1]))) or
                   min(closest) < CLOSE_IN * start or any(e.event == EpisodeEvent.SUCCESS for e in events), 45)
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=30)
    finally:
        up.kill()
    assert up.returncode == 0, out[-3000:]
    assert min(closest) < CLOSE_IN * start, \
        (f"end effector came to {min(closest):.3f} m of the cube from {start:.3f} m; ee {ee[::20]}, cube {cube[::20]}, "
         f"{len(chunks)} chunks, events {[(e.event, e.message) for e in events]}\n{out[-3000:]}")
    assert all(c.policy_version == 0 for c in chunks)
