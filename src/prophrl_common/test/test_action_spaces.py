"""The action spaces, the layout of an end effector's step and the policy's proprio state: their relations, and
prophrl_common.chunks as their only definition (the other modules import them)."""

import ast
from pathlib import Path

import numpy as np
import pytest

from prophrl_common import chunks
from prophrl_common.chunks import (ACTION_SPACES, ARM_ACTION_DIM, ARM_ACTION_NAMES, ARM_GRIPPER, EE_ACTION_SPACES,
                                   EE_POSE_NAMES, POLICY_STATE_DIM, POLICY_STATE_NAMES, InvalidChunkError,
                                   chunk_to_array)
from prophrl_common.geometry import EndEffectorPose
from prophrl_common.paths import repo_root

ROOT = repo_root()
# Names these constants had in other modules before chunks.py owned them: none may come back.
FORMER_NAMES = {"STATE_DIM", "ROBOT_ACTION_DIM", "EE_DIM", "EE_SPACES", "EE_DELTA_DIM", "EE_DELTA_NAMES", "GRIPPER"}


def test_the_spaces_dimensions_follow_from_one_end_effectors_step():
    assert ARM_ACTION_DIM == len(ARM_ACTION_NAMES) == 7
    assert ACTION_SPACES["ee_delta_7d"] == ARM_ACTION_DIM
    assert ACTION_SPACES["ee_delta_14d"] == 2 * ACTION_SPACES["ee_delta_7d"]
    assert ACTION_SPACES["joint_position"] == 0  # one per joint of the robot, not fixed here
    assert set(EE_ACTION_SPACES) <= set(ACTION_SPACES)
    assert all(ACTION_SPACES[space] % ARM_ACTION_DIM == 0 for space in EE_ACTION_SPACES)
    assert set(ACTION_SPACES) - set(EE_ACTION_SPACES) == {"joint_position"}


def test_the_step_layout_is_dpos_drot_gripper():
    assert ARM_ACTION_NAMES[:3] == ("dx", "dy", "dz") and ARM_ACTION_NAMES[ARM_GRIPPER] == "gripper"
    # drot is a rotation vector: a quarter turn about z, then the gripper command as given
    pose = EndEffectorPose.from_matrix((0.4, 0.0, 0.3), np.eye(3), 0.0)
    step = np.zeros(ARM_ACTION_DIM)
    step[:3], step[3:6], step[ARM_GRIPPER] = (0.01, 0.0, 0.0), (0.0, 0.0, np.pi / 2), 1.0
    moved = pose.apply_action(step)
    np.testing.assert_allclose(moved.position, (0.41, 0.0, 0.3))
    np.testing.assert_allclose(moved.rotation_matrix, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert moved.gripper == 1.0
    with pytest.raises(ValueError):
        pose.apply_action(np.zeros(ACTION_SPACES["ee_delta_14d"]))


def test_the_policy_state_is_the_ee_pose_and_the_gripper_command():
    assert POLICY_STATE_DIM == len(POLICY_STATE_NAMES) == len(EE_POSE_NAMES) + 1 == 8
    assert POLICY_STATE_NAMES[:len(EE_POSE_NAMES)] == EE_POSE_NAMES
    assert EE_POSE_NAMES == ("ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw")
    assert POLICY_STATE_NAMES[-1] == "gripper_command"


def test_a_chunk_is_checked_against_its_spaces_dimension():
    from prophrl_msgs.msg import ActionChunk

    def message(space, dim):
        msg = ActionChunk(action_space=space, horizon=2, action_dim=dim, control_period_s=0.05)
        msg.data = [0.0] * (2 * dim)
        return msg

    for space in EE_ACTION_SPACES:
        assert chunk_to_array(message(space, ACTION_SPACES[space])).shape == (2, ACTION_SPACES[space])
        with pytest.raises(InvalidChunkError, match="needs action_dim"):
            chunk_to_array(message(space, ACTION_SPACES[space] + 1))
    assert chunk_to_array(message("joint_position", 6)).shape == (2, 6)
    with pytest.raises(InvalidChunkError, match="unknown action_space"):
        chunk_to_array(message("ee_delta_6d", 6))


def _sources() -> list[Path]:
    return sorted(path for top in ("src", "bench", "scripts", "tests") for path in (ROOT / top).rglob("*.py"))


def _module_level_assignments(tree: ast.Module):
    """(name, line) of every name a module assigns outside functions and classes."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        yield name.id, node.lineno
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))


def _space_literals(tree: ast.Module) -> set[str]:
    """The strings compared (==, !=, in) with a variable or attribute whose name ends in "space"."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.comparators) == 1:
            sides = [node.left, node.comparators[0]]
            named = [getattr(side, "id", getattr(side, "attr", "")) for side in sides]
            if any(name.endswith("space") for name in named):
                found |= {side.value for side in sides
                          if isinstance(side, ast.Constant) and isinstance(side.value, str)}
    return found


def test_chunks_is_the_only_module_defining_the_action_space_constants():
    owned = {name for name, _ in _module_level_assignments(ast.parse(Path(chunks.__file__).read_text()))
             if name.isupper()}
    assert {"ACTION_SPACES", "EE_ACTION_SPACES", "ARM_ACTION_DIM", "POLICY_STATE_NAMES"} <= owned
    offending = []
    for path in _sources():
        if path.resolve() == Path(chunks.__file__).resolve():
            continue
        for name, line in _module_level_assignments(ast.parse(path.read_text(), str(path))):
            if name in owned | FORMER_NAMES:
                offending.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offending, "import these from prophrl_common.chunks instead:\n" + "\n".join(offending)


def test_the_scan_finds_a_redefinition_and_the_spaces_a_module_compares(tmp_path):
    tree = ast.parse("import x\nif x:\n    STATE_DIM = 8\nA, (B, C) = 1, (2, 3)\n"
                     "def f(space):\n    ARM_ACTION_DIM = 7\n    return space == 'ee_delta_7d' or 'j' != self.space\n")
    assert sorted(_module_level_assignments(tree)) == [("A", 4), ("B", 4), ("C", 4), ("STATE_DIM", 3)]
    assert _space_literals(tree) == {"ee_delta_7d", "j"}


def test_every_space_a_module_dispatches_on_is_in_the_table():
    used = {}
    for path in _sources():
        for space in _space_literals(ast.parse(path.read_text(), str(path))):
            used.setdefault(space, []).append(str(path.relative_to(ROOT)))
    unknown = {space: paths for space, paths in used.items() if space not in ACTION_SPACES}
    assert not unknown, f"action spaces missing from prophrl_common.chunks.ACTION_SPACES: {unknown}"
    # The executor's arm commander runs every space of the table, and only those.
    commander = ROOT / "src" / "prophrl_robot" / "prophrl_robot" / "arm_commands.py"
    assert _space_literals(ast.parse(commander.read_text())) == set(ACTION_SPACES)
