import math

import numpy as np
import pytest

from prophrl_common.geometry import CameraCalibration, EndEffectorPose
from prophrl_worldmodel.action_frames import (ActionFrameStyle, integrate_actions, render_action_frame, render_action_frames)

K = (100.0, 0.0, 31.5, 0.0, 120.0, 23.5, 0.0, 0.0, 1.0)
DISK_ONLY = ActionFrameStyle(axis_length_m=0.0)


def _camera(world_to_camera=None, width=64, height=48):
    return CameraCalibration.from_camera_info(K, np.eye(4) if world_to_camera is None else world_to_camera,
                                              width, height)


def _pose(x, y, z, gripper=0.0):
    return EndEffectorPose.from_matrix((x, y, z), np.eye(3), gripper)


def _drawn(image, style=DISK_ONLY):
    return np.any(image != np.array(style.background, np.uint8), axis=-1)


def _ink(image):
    """Anti-aliased coverage per pixel in [0, 1] (background is black)."""
    return image.max(axis=-1) / 255.0


def _centroid(weight):
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    weight = weight.astype(np.float64)
    return (xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()


def test_a_point_in_front_of_the_camera_projects_where_the_pinhole_model_says():
    # camera 2 m above the world origin looking straight down (optical z = world -z), x along world x
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = np.diag([1.0, -1.0, -1.0])
    world_to_camera[:3, 3] = (0.0, 0.0, 2.0)
    camera = _camera(world_to_camera)
    pixels, depth = camera.project([(0.2, 0.1, 0.5)])
    # camera frame: (0.2, -0.1, 1.5)
    assert depth[0] == pytest.approx(1.5)
    assert pixels[0] == pytest.approx((100 * 0.2 / 1.5 + 31.5, 120 * -0.1 / 1.5 + 23.5))
    # the drawn disk is centred on that pixel (sub-pixel accurate drawing)
    image = render_action_frame(camera, [_pose(0.2, 0.1, 0.5)], DISK_ONLY)
    assert _centroid(_ink(image)) == pytest.approx(tuple(pixels[0]), abs=0.1)


def test_farther_end_effectors_draw_smaller_disks():
    camera = _camera()
    near = _ink(render_action_frame(camera, [_pose(0, 0, 0.5)], DISK_ONLY)).sum()
    far = _ink(render_action_frame(camera, [_pose(0, 0, 1.0)], DISK_ONLY)).sum()
    assert far < near
    radius_near = 100 * DISK_ONLY.disk_radius_m / 0.5  # fx * r / depth = 6 px
    assert near == pytest.approx(math.pi * radius_near**2, rel=0.2)
    assert near / far == pytest.approx(4.0, rel=0.25)


def test_gripper_opening_sets_the_disk_colour():
    camera = _camera()
    centre = (23, 31)  # (row, col) of the projected origin at depth 1
    opened = render_action_frame(camera, [_pose(0, 0, 1.0, gripper=0.0)], DISK_ONLY)[centre]
    closed = render_action_frame(camera, [_pose(0, 0, 1.0, gripper=1.0)], DISK_ONLY)[centre]
    half = render_action_frame(camera, [_pose(0, 0, 1.0, gripper=0.5)], DISK_ONLY)[centre]
    assert tuple(opened) == DISK_ONLY.open_color and tuple(closed) == DISK_ONLY.closed_color
    assert not np.array_equal(opened, closed)
    assert tuple(half) == DISK_ONLY.gripper_color(0.5) not in (DISK_ONLY.open_color, DISK_ONLY.closed_color)


def test_a_point_behind_the_camera_draws_nothing():
    camera = _camera()
    image = render_action_frame(camera, [_pose(0.0, 0.0, -1.0)])
    assert not _drawn(image).any()
    assert not _drawn(render_action_frame(camera, [])).any()


def test_local_axes_are_drawn_in_their_colours_and_directions():
    camera = _camera()
    image = render_action_frame(camera, [_pose(0, 0, 1.0)], ActionFrameStyle(disk_radius_m=0.005))
    r, g, b = (image[..., c].astype(int) for c in range(3))
    red = (r > 80) & (r > 2 * g) & (r > 2 * b)
    green = (g > 80) & (g > 2 * r) & (g > 2 * b)
    u0, v0 = 31.5, 23.5
    # the local x axis (world x) points right in the image, the local y axis (world y) points down
    assert red.any() and _centroid(red)[0] > u0 + 2
    assert green.any() and _centroid(green)[1] > v0 + 2


def test_two_end_effectors_are_both_drawn():
    camera = _camera()
    image = render_action_frame(camera, [_pose(-0.15, 0, 1.0), _pose(0.15, 0, 1.0, gripper=1.0)], DISK_ONLY)
    assert tuple(image[23, 31 - 15]) == DISK_ONLY.open_color
    assert tuple(image[23, 31 + 15]) == DISK_ONLY.closed_color


def test_actions_integrate_into_per_frame_poses():
    start = EndEffectorPose.from_quaternion((0.0, 0.0, 1.0), (0, 0, 0, 1), gripper=0.0)
    actions = np.zeros((4, 7))
    actions[:, 0] = 0.01                 # +1 cm x per step
    actions[:, 5] = math.pi / 8          # yaw about the base z axis
    actions[2:, 6] = 1.0                 # close the gripper in the second frame
    frames = integrate_actions([start], actions, actions_per_frame=2)
    assert len(frames) == 2
    first, second = frames[0][0], frames[1][0]
    assert first.position == pytest.approx((0.02, 0.0, 1.0)) and second.position == pytest.approx((0.04, 0.0, 1.0))
    quarter_turn = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    np.testing.assert_allclose(second.rotation_matrix, quarter_turn, atol=1e-9)
    assert (first.gripper, second.gripper) == (0.0, 1.0)
    images = render_action_frames(_camera(), [start], actions, actions_per_frame=2)
    assert images.shape == (2, 48, 64, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError):
        integrate_actions([start], actions, actions_per_frame=3)
