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

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.geometry import CameraCalibration, EndEffectorPose

DRAW_SHIFT = 4                 # cv2 fixed-point bits: sub-pixel accurate centres and radii
DRAW_SCALE = 1 << DRAW_SHIFT
MAX_DRAW_COORD = 1 << 20       # keeps near-plane projections inside cv2's int32 coordinates
AXIS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


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
