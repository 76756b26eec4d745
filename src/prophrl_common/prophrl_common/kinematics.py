"""Serial-arm kinematics from Denavit-Hartenberg parameters: pure numpy (+ scipy rotations), no ROS.

A robot config's ``kinematics`` mapping (config/robots/*.yaml) holds the arm's published parameters:

* ``convention``: ``dh`` (standard, T_i = Rz(theta) Tz(d) Tx(a) Rx(alpha): what Universal Robots
  publishes) or ``modified_dh`` (Craig, T_i = Rx(alpha) Tx(a) Rz(theta) Tz(d): what Franka publishes,
  one row per joint with that row's a and alpha);
* ``a``, ``d``, ``alpha``: one value per joint (metres, radians), ``theta_offset`` optional;
* ``chain_base``: the name of the frame the table starts in (e.g. UR's ``base``), and
  ``chain_base_pose``: that frame's pose in the robot's ``base_frame`` (x y z roll pitch yaw);
* ``tool_pose``: the pose of the robot's ``ee_frame`` in the table's last frame (x y z roll pitch yaw),
  e.g. Franka's flange + hand + TCP offset.

:class:`KinematicChain` gives the ``ee_frame`` pose in ``base_frame`` for joint positions in the robot
config's joint order (:meth:`forward`, :meth:`pose`), the geometric Jacobian at the end effector in
``base_frame`` (:meth:`jacobian`) and a damped-least-squares solver for small end-effector steps
(:meth:`solve_step`), which is what the executor needs to turn an ``ee_delta`` step into joint targets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_common.config_io import ConfigError

CONVENTIONS = ("dh", "modified_dh")
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class KinematicsConfig:
    """The ``kinematics`` mapping of a robot config (see the module docstring)."""

    convention: str
    a: tuple[float, ...]
    d: tuple[float, ...]
    alpha: tuple[float, ...]
    theta_offset: tuple[float, ...] = ()
    chain_base: str = ""
    chain_base_pose: tuple[float, ...] = IDENTITY_POSE
    tool_pose: tuple[float, ...] = IDENTITY_POSE

    def validate(self, source: str, num_joints: int) -> "KinematicsConfig":
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"{source}: kinematics.convention must be one of {CONVENTIONS}, got {self.convention!r}")
        for key in ("a", "d", "alpha"):
            if len(getattr(self, key)) != num_joints:
                raise ConfigError(f"{source}: kinematics.{key} has {len(getattr(self, key))} values, "
                                  f"expected {num_joints} (one per joint)")
        if self.theta_offset and len(self.theta_offset) != num_joints:
            raise ConfigError(f"{source}: kinematics.theta_offset has {len(self.theta_offset)} values, "
                              f"expected {num_joints} (or none)")
        for key in ("chain_base_pose", "tool_pose"):
            if len(getattr(self, key)) != 6:
                raise ConfigError(f"{source}: kinematics.{key} needs 6 values (x y z roll pitch yaw)")
        values = self.a + self.d + self.alpha + self.theta_offset + self.chain_base_pose + self.tool_pose
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{source}: kinematics values must be finite")
        return self


def pose_matrix(xyz_rpy: Sequence[float]) -> np.ndarray:
    """4x4 transform from x y z and roll pitch yaw (fixed axes X, Y, Z: URDF's rpy)."""
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", xyz_rpy[3:6]).as_matrix()
    out[:3, 3] = xyz_rpy[:3]
    return out


def matrix_to_pose(transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion x y z w (4,)) of a 4x4 transform."""
    return transform[:3, 3].copy(), Rotation.from_matrix(transform[:3, :3]).as_quat()


def pose_to_matrix(position: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_quat(np.asarray(quaternion_xyzw, dtype=np.float64)).as_matrix()
    out[:3, 3] = position
    return out


def _rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (plain numpy: scipy's per-call overhead dominates small IK steps)."""
    cos = (np.trace(rotation) - 1.0) / 2.0
    skew = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    if cos < -0.99:  # near pi the skew part vanishes
        return Rotation.from_matrix(rotation).as_rotvec()
    angle = math.acos(min(1.0, cos))
    return skew * (0.5 if angle < 1e-8 else angle / (2.0 * math.sin(angle)))


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _translate(x: float, y: float, z: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = (x, y, z)
    return out


class KinematicChain:
    """Forward kinematics, Jacobian and small-step IK of one serial arm."""

    def __init__(self, config: KinematicsConfig, lower: Sequence[float] | None = None,
                 upper: Sequence[float] | None = None):
        self.config = config
        self.num_joints = len(config.a)
        self.offsets = np.asarray(config.theta_offset or (0.0,) * self.num_joints, dtype=np.float64)
        self.base = pose_matrix(config.chain_base_pose)
        self.tool = pose_matrix(config.tool_pose)
        self.lower = None if lower is None else np.asarray(lower, dtype=np.float64)
        self.upper = None if upper is None else np.asarray(upper, dtype=np.float64)
        # The constant part of each row: before Rz(theta) (modified DH) or after it (standard DH).
        self._fixed = []
        for a, d, alpha in zip(config.a, config.d, config.alpha):
            if config.convention == "dh":
                self._fixed.append(_translate(0.0, 0.0, d) @ _translate(a, 0.0, 0.0) @ _rot_x(alpha))
            else:
                self._fixed.append(_rot_x(alpha) @ _translate(a, 0.0, 0.0))
        self._modified_d = [_translate(0.0, 0.0, d) for d in config.d]

    @classmethod
    def for_robot(cls, robot) -> "KinematicChain":
        """The chain of a :class:`prophrl_common.robots.RobotConfig`; ConfigError when it has none."""
        if robot.kinematics is None:
            raise ConfigError(f"robot {robot.name} has no kinematics in its config (needed for forward kinematics)")
        return cls(robot.kinematics, robot.joint_position_lower, robot.joint_position_upper)

    def _joints(self, q: Sequence[float]) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.num_joints,):
            raise ValueError(f"expected {self.num_joints} joint positions, got shape {q.shape}")
        return q + self.offsets

    def _walk(self, q: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
        """(the frame each joint rotates about, in base_frame; the ee_frame pose in base_frame)."""
        theta = self._joints(q)
        current = self.base.copy()
        axes = []
        for i in range(self.num_joints):
            if self.config.convention == "dh":
                axes.append(current)
                current = current @ _rot_z(theta[i]) @ self._fixed[i]
            else:
                current = current @ self._fixed[i]
                axes.append(current)
                current = current @ _rot_z(theta[i]) @ self._modified_d[i]
        return axes, current @ self.tool

    def forward(self, q: Sequence[float]) -> np.ndarray:
        """4x4 pose of ee_frame in base_frame."""
        return self._walk(q)[1]

    def pose(self, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion x y z w (4,)) of ee_frame in base_frame."""
        return matrix_to_pose(self.forward(q))

    def jacobian(self, q: Sequence[float]) -> np.ndarray:
        """6 x n geometric Jacobian: rows vx vy vz wx wy wz of ee_frame's origin, in base_frame."""
        axes, ee = self._walk(q)
        frames = np.stack(axes)
        z, lever = frames[:, :3, 2], ee[:3, 3] - frames[:, :3, 3]
        linear = np.stack([z[:, 1] * lever[:, 2] - z[:, 2] * lever[:, 1],
                           z[:, 2] * lever[:, 0] - z[:, 0] * lever[:, 2],
                           z[:, 0] * lever[:, 1] - z[:, 1] * lever[:, 0]])
        return np.vstack([linear, z.T])

    def solve_step(self, q: Sequence[float], translation: Sequence[float], rotation: Sequence[float],
                   tolerance_m: float = 1e-4, tolerance_rad: float = 1e-3, max_iterations: int = 50,
                   damping: float = 1e-3) -> np.ndarray | None:
        """Joint positions near ``q`` that move ee_frame by ``translation`` (metres, base_frame) and
        rotate it by the rotation vector ``rotation`` (radians, about base_frame's axes), or None when
        damped least squares does not reach it within the tolerances (joints stay inside the limits
        given to the constructor)."""
        start = self._joints(q) - self.offsets
        current = self.forward(start)
        target_p = current[:3, 3] + np.asarray(translation, dtype=np.float64)
        target_r = Rotation.from_rotvec(np.asarray(rotation, dtype=np.float64)).as_matrix() @ current[:3, :3]
        solution = start.copy()
        for _ in range(max_iterations):
            pose = self.forward(solution)
            error = np.concatenate([target_p - pose[:3, 3], _rotation_vector(target_r @ pose[:3, :3].T)])
            if np.linalg.norm(error[:3]) <= tolerance_m and np.linalg.norm(error[3:]) <= tolerance_rad:
                return solution
            jac = self.jacobian(solution)
            step = jac.T @ np.linalg.solve(jac @ jac.T + damping ** 2 * np.eye(6), error)
            solution = solution + step
            if self.lower is not None:
                solution = np.clip(solution, self.lower, self.upper)
        return None
