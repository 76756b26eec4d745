"""The launch files' rules, as `prophrl up` has them: unknown arguments and missing input paths stop a launch
before any node starts, with one line that says what to pass; a required node's exit fails the launch unless
it is shutting down anyway. (`launch` / `launch_ros` are not installable here: this tests the logic the launch
files run, prophrl.launch_profile, and `prophrl up` itself.)"""

import subprocess
import sys
import time

import pytest

from prophrl.launch_profile import FRAMEWORK_CONFIGURATIONS, profile_for_launch, required_exit_reason
from prophrl.profiles import NodeSpec, available_profiles, load_profile, profile_arguments, required_node_exit
from prophrl_common.config_io import ConfigError


def _configurations(profile, **given):
    """What ros2 launch holds as launch configurations: the declared arguments with their defaults, then the
    ones given on the command line (and launch's own)."""
    return {**{a.name: a.default for a in profile_arguments(profile)}, **given}


def test_a_misspelled_launch_argument_is_refused():
    declared = r"arguments: \['real_time_factor', 'robot', 'seed', 'task'\]"
    with pytest.raises(ConfigError, match=r"profile 'sim' has no argument 'robt'; " + declared):
        profile_for_launch("sim", _configurations("sim", robt="ur5e_sim"))


def test_launch_and_launch_ros_configurations_are_not_profile_arguments():
    framework = {name: "5" for name in FRAMEWORK_CONFIGURATIONS} | {"anon_talker": "talker_1234"}
    profile = profile_for_launch("sim", _configurations("sim", robot="ur5e_sim", **framework))
    assert profile.values["robot"] == "ur5e_sim"
    assert {spec.name: spec.parameters["robot"] for spec in profile.nodes} == \
        {"sim": "ur5e_sim", "executor": "ur5e_sim", "expert": "ur5e_sim"}


@pytest.mark.parametrize("profile, paths", [
    ("real_robot", ["checkpoint"]), ("sim_policy", ["checkpoint"]),
    ("imagination", ["checkpoint", "world_model", "start_dataset"]),
    ("train", ["checkpoint", "world_model", "judge", "dataset"]),
])
def test_launching_without_the_inputs_names_each_missing_path_and_its_argument(tmp_path, monkeypatch, profile, paths):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        profile_for_launch(profile, _configurations(profile))
    message = str(error.value)
    assert "\n" not in message
    for name in paths:
        default = load_profile(profile).values[name]
        assert f"{name}:={default} does not exist (looked for {tmp_path / default})" in message, message
        assert f"pass {name}:=PATH" in message
    for name in paths:   # given, they pass
        (tmp_path / "given" / name).mkdir(parents=True)
    given = {name: str(tmp_path / "given" / name) for name in paths}
    assert profile_for_launch(profile, _configurations(profile, **given)).values == _configurations(profile, **given)


def test_profiles_without_input_paths_launch_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in available_profiles():
        if not any(a.must_exist for a in profile_arguments(name)):
            profile_for_launch(name, _configurations(name))


def _node(name, ends_profile=False):
    return NodeSpec(name, "prophrl_sim", "sim_node", None, {}, (), True, ends_profile)


def test_a_required_node_exit_fails_the_launch_unless_it_is_shutting_down():
    sim = _node("sim")
    assert required_exit_reason(sim, 0, shutting_down=False) == required_node_exit(sim, 0)[1] == \
        "required node sim exited with code 0; stopping the profile"
    assert required_exit_reason(sim, -11, shutting_down=False).startswith("required node sim exited with code -11")
    assert required_exit_reason(sim, -2, shutting_down=True) is None   # Ctrl-C: the launch exits 0
    assert required_node_exit(sim, 0)[0] == 1 and required_node_exit(sim, 3)[0] == 3


def test_the_node_that_ends_the_profile_ends_it_with_0_when_it_finished_and_fails_it_otherwise():
    trainer = _node("trainer_node", ends_profile=True)
    assert required_node_exit(trainer, 0) == (0, "trainer_node finished; stopping the profile")
    assert required_exit_reason(trainer, 0, shutting_down=False) is None
    assert required_node_exit(trainer, 1)[0] == 1
    assert required_exit_reason(trainer, 1, shutting_down=False) == \
        "required node trainer_node exited with code 1; stopping the profile"
    assert [n.name for n in load_profile("train").nodes if n.ends_profile] == ["trainer_node"]


def test_up_refuses_missing_inputs_in_one_line_without_starting_nodes(tmp_path):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "prophrl.cli", "up", "train", "updates:=5"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prophrl up: error: profile 'train': checkpoint:=checkpoints/sft "
                                                   "does not exist"), result.stderr
    for name in ("world_model", "judge", "dataset"):
        assert f"pass {name}:=PATH" in lines[0]
    assert "[prophrl up] started" not in result.stdout
    assert time.monotonic() - start < 30


def test_up_dry_run_prints_commands_whatever_the_inputs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prophrl.cli", "up", "real_robot", "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "checkpoint_path:=" in result.stdout, result.stderr
