"""The rules of an action chunk: its action spaces and layouts, prophrl_msgs/ActionChunk <-> numpy with the
validation every consumer needs, and the timing of a chunk's rows.

The action spaces (ACTION_SPACES, EE_ACTION_SPACES), the layout of one end effector's step (ARM_ACTION_*),
the end-effector pose (EE_POSE_NAMES) and the policy's proprio state (POLICY_STATE_*) are defined here and
nowhere else.

Row i of a chunk is due i control periods after the chunk's header stamp (the time of the observation it
was planned from): the executor starts a chunk at the row due when it arrives, and a recording labels
each frame with the row due at the frame's time. Both use :func:`rows_due` on integer nanoseconds.
"""

from __future__ import annotations

import array
from fractions import Fraction

import numpy as np

# One end effector's step in an ee_delta action: dpos (3, metres) and drot (3, a rotation vector in radians),
# both about the robot base axes, then the gripper (1, an absolute command: 0 open .. 1 closed). The names
# are the datasets' action feature names (droll dpitch dyaw: the rotation vector's x y z components).
ARM_ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ARM_ACTION_DIM = len(ARM_ACTION_NAMES)
ARM_GRIPPER = ARM_ACTION_NAMES.index("gripper")

# The action spaces an ActionChunk may carry, and their per-step dimension (0: any, checked elsewhere).
ACTION_SPACES = {
    "ee_delta_7d": ARM_ACTION_DIM,       # one end effector
    "ee_delta_14d": 2 * ARM_ACTION_DIM,  # two end effectors, one after the other; single-arm data zero-pads the second
    "joint_position": 0,                 # absolute joint targets, one per joint in the robot config's order
}
# The spaces made of end-effector steps (ARM_ACTION_DIM each); the world model imagines only these.
EE_ACTION_SPACES = ("ee_delta_7d", "ee_delta_14d")
# Their datasets' action feature names (end effector 0's step, then end effector 1's).
EE_ACTION_NAMES = {
    "ee_delta_7d": ARM_ACTION_NAMES,
    "ee_delta_14d": tuple(f"ee{arm}_{name}" for arm in (0, 1) for name in ARM_ACTION_NAMES),
}

# An end-effector pose in the robot base frame: position xyz (metres), orientation quaternion xyzw.
EE_POSE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw")
# The policy's proprio state: the ee pose and the gripper command in force (0 open .. 1 closed).
# Checkpoints record it as Embodiment.state_names.
POLICY_STATE_NAMES = (*EE_POSE_NAMES, "gripper_command")
POLICY_STATE_DIM = len(POLICY_STATE_NAMES)


class InvalidChunkError(ValueError):
    """An ActionChunk that must not be executed."""


def chunk_to_array(msg) -> np.ndarray:
    """Return the chunk as a (horizon, action_dim) float32 array or raise InvalidChunkError."""
    horizon, dim = int(msg.horizon), int(msg.action_dim)
    if msg.action_space not in ACTION_SPACES:
        raise InvalidChunkError(f"unknown action_space {msg.action_space!r}; known: {sorted(ACTION_SPACES)}")
    expected_dim = ACTION_SPACES[msg.action_space]
    if expected_dim and dim != expected_dim:
        raise InvalidChunkError(f"action_space {msg.action_space} needs action_dim {expected_dim}, got {dim}")
    if horizon == 0 or dim == 0:
        raise InvalidChunkError(f"empty chunk (horizon={horizon}, action_dim={dim})")
    data = np.asarray(msg.data, dtype=np.float32)
    if data.size != horizon * dim:
        raise InvalidChunkError(
            f"data has {data.size} values but horizon*action_dim = {horizon}*{dim} = {horizon * dim}"
        )
    if not np.all(np.isfinite(data)):
        raise InvalidChunkError("data contains NaN or inf")
    if not (np.isfinite(msg.control_period_s) and msg.control_period_s > 0):
        raise InvalidChunkError(f"control_period_s must be > 0, got {msg.control_period_s}")
    return data.reshape(horizon, dim)


def array_to_chunk(actions: np.ndarray, action_space: str, control_period_s: float,
                   policy_version: int = 0, instruction: str = "", stamp=None, frame_id: str = ""):
    from prophrl_msgs.msg import ActionChunk

    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2:
        raise ValueError(f"actions must be (horizon, action_dim), got shape {actions.shape}")
    msg = ActionChunk()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.action_space = action_space
    msg.horizon, msg.action_dim = actions.shape
    msg.data = array.array("f", actions.ravel().tobytes())  # a list is checked element by element
    msg.control_period_s = float(control_period_s)
    msg.policy_version = int(policy_version)
    msg.instruction = instruction
    return msg


def _shortest_decimal(value: float, dtype) -> Fraction:
    """The shortest decimal that `value` as `dtype` denotes, exactly ("0.05", not 0.0500000007450580596...)."""
    return Fraction(np.format_float_positional(dtype(value), unique=True, trim="0"))


def chunk_period_ns(chunk_period_s: float, robot_control_period_s: float) -> Fraction:
    """A chunk's control period in ns, exactly.

    ActionChunk carries it as a float32, where 0.05 s is 50,000,000.745 ns: one period after a chunk,
    a float quotient is floor(0.99999998) = 0, the previous row. The period is the robot config's (the
    decimal written there) when the float32 holds that value, else the shortest decimal the float32
    denotes.
    """
    if np.float32(chunk_period_s) == np.float32(robot_control_period_s):
        seconds = _shortest_decimal(robot_control_period_s, np.float64)
    else:
        seconds = _shortest_decimal(chunk_period_s, np.float32)
    return seconds * 1_000_000_000


def rows_due(elapsed_ns, period_ns: Fraction) -> np.ndarray:
    """floor(elapsed / period) for each elapsed time (ns since the chunk's stamp), in exact integers."""
    return np.asarray([(int(elapsed) * period_ns.denominator) // period_ns.numerator
                       for elapsed in np.atleast_1d(elapsed_ns)], np.int64)


def chunk_steps_due(elapsed_ns: np.ndarray, period_ns: Fraction, horizon: int) -> np.ndarray:
    """The row due at each elapsed time, clipped to the chunk's last row (a recording's action labels)."""
    return np.minimum(rows_due(elapsed_ns, period_ns), horizon - 1).astype(np.int32)
