"""Camera and end-effector geometry in the robot base frame: a pinhole camera's calibration and an end-effector pose.

Conventions: the camera frame is the OpenCV / ROS optical frame (x right, y down, z forward); K is
sensor_msgs/CameraInfo.k (row-major 3x3, pixel centres at integer coordinates); world_to_camera is the
4x4 transform taking world (robot base) points into that frame. Poses are in the world frame; an
ee_delta_7d action is dpos in metres and drot a rotation vector, both about the base axes, and an
absolute gripper command (0 open .. 1 closed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.config_io import ConfigError

@dataclasses.dataclass(frozen=True)
class CameraCalibration:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    world_to_camera: tuple[float, ...]   # 16 values, row-major 4x4

    @classmethod
    def from_camera_info(cls, k: Sequence[float], world_to_camera, width: int, height: int) -> "CameraCalibration":
        """From CameraInfo.k (9 floats, row-major) and a 4x4 world->camera transform (rigid)."""
        k = np.asarray(k, np.float64).reshape(-1)
        if k.shape != (9,) or not np.isfinite(k).all():
            raise ConfigError(f"camera K must be 9 finite values, got {k.tolist()}")
        if k[0] <= 0 or k[4] <= 0 or not np.allclose(k[[3, 6, 7, 8]], [0, 0, 0, 1]):
            raise ConfigError(f"camera K is not a pinhole matrix [fx 0 cx; 0 fy cy; 0 0 1]: {k.tolist()}")
        pose = np.asarray(world_to_camera, np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ConfigError(f"world_to_camera must be a finite 4x4 matrix, got shape {pose.shape}")
        rotation = pose[:3, :3]
        if not np.allclose(pose[3], [0, 0, 0, 1]) or not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-5) \
                or np.linalg.det(rotation) <= 0:
            raise ConfigError("world_to_camera must be a rigid transform (rotation + translation)")
        if width <= 0 or height <= 0:
            raise ConfigError(f"image size must be positive, got {width}x{height}")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height),
                   tuple(float(v) for v in pose.reshape(-1)))

    @property
    def world_to_camera_matrix(self) -> np.ndarray:
        return np.asarray(self.world_to_camera, np.float64).reshape(4, 4)

    def resized(self, width: int, height: int) -> "CameraCalibration":
        """The same camera for frames resized (not cropped) to width x height."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                                   cy=(self.cy + 0.5) * sy - 0.5, width=int(width), height=int(height))

    def project(self, points_world) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> (pixels (N, 2) as (u, v), depth (N,)). Pixels of points with depth <= 0
        are meaningless: check depth."""
        points = np.asarray(points_world, np.float64).reshape(-1, 3)
        pose = self.world_to_camera_matrix
        camera = points @ pose[:3, :3].T + pose[:3, 3]
        depth = camera[:, 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        pixels = np.stack([self.fx * camera[:, 0] / safe + self.cx, self.fy * camera[:, 1] / safe + self.cy], axis=1)
        return pixels, depth


@dataclasses.dataclass(frozen=True)
class EndEffectorPose:
    position: tuple[float, float, float]   # world frame, metres
    rotation: tuple[float, ...]            # 3x3 rotation matrix (end effector -> world), row-major
    gripper: float                         # 0 open .. 1 closed

    @classmethod
    def from_quaternion(cls, position, quaternion_xyzw, gripper: float) -> "EndEffectorPose":
        x, y, z, w = np.asarray(quaternion_xyzw, np.float64) / np.linalg.norm(quaternion_xyzw)
        matrix = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                           [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                           [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        return cls.from_matrix(position, matrix, gripper)

    @classmethod
    def from_matrix(cls, position, rotation_matrix, gripper: float) -> "EndEffectorPose":
        return cls(tuple(float(v) for v in np.asarray(position, np.float64).reshape(3)),
                   tuple(float(v) for v in np.asarray(rotation_matrix, np.float64).reshape(9)), float(gripper))

    @property
    def rotation_matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, np.float64).reshape(3, 3)

    def apply_action(self, action) -> "EndEffectorPose":
        """One ee_delta_7d step: [dpos (3), drot rotation vector (3), gripper command]."""
        action = np.asarray(action, np.float64).reshape(ARM_ACTION_DIM)
        delta_rotation, _ = cv2.Rodrigues(action[3:6].reshape(3, 1))
        return EndEffectorPose.from_matrix(np.asarray(self.position) + action[:3],
                                           delta_rotation @ self.rotation_matrix, action[6])
