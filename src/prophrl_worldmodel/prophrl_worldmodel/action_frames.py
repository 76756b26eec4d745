"""Action frames: end-effector poses drawn into the camera image (Prophet's optional action conditioning).

Each end effector becomes a filled disk at its projected position, radius = fx * disk_radius_m / depth
(so it shrinks with distance), coloured by gripper opening (linear blend from open_color at 0 to
closed_color at 1, the ee_delta_7d convention 0 open .. 1 closed), with its three local axes drawn on
top as short lines (x red, y green, z blue). An end effector behind the camera draws nothing.

Conventions: the camera frame is the OpenCV / ROS optical frame (x right, y down, z forward); K is
sensor_msgs/CameraInfo.k (row-major 3x3, pixel centres at integer coordinates); world_to_camera is the
4x4 transform taking world (robot base) points into that frame. Poses are in the world frame; action
deltas follow ee_delta_7d: dpos in metres and drot a rotation vector, both about the base axes, and an
absolute gripper command. Images are RGB uint8, (H, W, 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.configuration_prophet import ARM_ACTION_DIM

DRAW_SHIFT = 4                 # cv2 fixed-point bits: sub-pixel accurate centres and radii
DRAW_SCALE = 1 << DRAW_SHIFT
MAX_DRAW_COORD = 1 << 20       # keeps near-plane projections inside cv2's int32 coordinates
AXIS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


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


@dataclasses.dataclass(frozen=True)
class ActionFrameStyle:
    disk_radius_m: float = 0.03
    axis_length_m: float = 0.08                # 0: no axes
    axis_thickness_px: int = 1
    min_radius_px: float = 1.0
    near_m: float = 0.01                       # points closer than this (or behind) are not drawn
    open_color: tuple[int, int, int] = (255, 255, 0)
    closed_color: tuple[int, int, int] = (255, 0, 255)
    background: tuple[int, int, int] = (0, 0, 0)

    def gripper_color(self, gripper: float) -> tuple[int, ...]:
        g = float(np.clip(gripper, 0.0, 1.0))
        return tuple(int(round((1 - g) * o + g * c)) for o, c in zip(self.open_color, self.closed_color))


def _fixed_point(pixel) -> tuple[int, int]:
    u, v = np.clip(np.asarray(pixel) * DRAW_SCALE, -MAX_DRAW_COORD, MAX_DRAW_COORD)
    return int(round(u)), int(round(v))


def render_action_frame(calibration: CameraCalibration, poses: Sequence[EndEffectorPose],
                        style: ActionFrameStyle = ActionFrameStyle()) -> np.ndarray:
    """One (height, width, 3) uint8 RGB frame with every end effector of `poses` drawn (farthest first)."""
    image = np.empty((calibration.height, calibration.width, 3), np.uint8)
    image[:] = style.background
    centres, depths = calibration.project([p.position for p in poses]) if poses else (np.empty((0, 2)), np.empty(0))
    for index in np.argsort(-depths):
        pose, centre, depth = poses[index], centres[index], depths[index]
        if depth <= style.near_m:
            continue
        radius = max(calibration.fx * style.disk_radius_m / depth, style.min_radius_px)
        cv2.circle(image, _fixed_point(centre), int(round(min(radius, MAX_DRAW_COORD) * DRAW_SCALE)),
                   style.gripper_color(pose.gripper), thickness=-1, lineType=cv2.LINE_AA, shift=DRAW_SHIFT)
        if style.axis_length_m <= 0:
            continue
        tips = np.asarray(pose.position) + style.axis_length_m * pose.rotation_matrix.T  # rows: axis end points
        tip_pixels, tip_depths = calibration.project(tips)
        for tip, tip_depth, color in zip(tip_pixels, tip_depths, AXIS_COLORS):
            if tip_depth > style.near_m:
                cv2.line(image, _fixed_point(centre), _fixed_point(tip), color, style.axis_thickness_px,
                         lineType=cv2.LINE_AA, shift=DRAW_SHIFT)
    return image


def integrate_actions(start_poses: Sequence[EndEffectorPose], actions, actions_per_frame: int
                      ) -> list[list[EndEffectorPose]]:
    """End-effector poses at each predicted frame: after every actions_per_frame steps of the chunk.

    actions (horizon, 7 * arms); start_poses one per arm. Returns horizon / actions_per_frame lists of poses.
    """
    actions = np.asarray(actions, np.float64)
    arms = len(start_poses)
    if actions.ndim != 2 or actions.shape[1] < ARM_ACTION_DIM * arms:
        raise ValueError(f"actions must be (horizon, >= {ARM_ACTION_DIM * arms}) for {arms} arm(s), "
                         f"got {actions.shape}")
    if actions_per_frame <= 0 or actions.shape[0] % actions_per_frame:
        raise ValueError(f"horizon {actions.shape[0]} is not a multiple of actions_per_frame {actions_per_frame}")
    poses, frames = list(start_poses), []
    for step, action in enumerate(actions, start=1):
        poses = [pose.apply_action(action[ARM_ACTION_DIM * arm:ARM_ACTION_DIM * (arm + 1)])
                 for arm, pose in enumerate(poses)]
        if step % actions_per_frame == 0:
            frames.append(poses)
    return frames


def render_action_frames(calibration: CameraCalibration, start_poses: Sequence[EndEffectorPose], actions,
                         actions_per_frame: int, style: ActionFrameStyle = ActionFrameStyle()) -> np.ndarray:
    """(frames, height, width, 3) uint8: the poses an action chunk leads to, one frame per predicted frame."""
    return np.stack([render_action_frame(calibration, poses, style)
                     for poses in integrate_actions(start_poses, actions, actions_per_frame)])
