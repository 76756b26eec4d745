"""prophrl_common.geometry: camera calibration (projection, resizing, validation) and end-effector poses."""

import math

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration, EndEffectorPose

K = (100.0, 0.0, 31.5, 0.0, 120.0, 23.5, 0.0, 0.0, 1.0)


def _camera(world_to_camera=None, width=64, height=48):
    return CameraCalibration.from_camera_info(K, np.eye(4) if world_to_camera is None else world_to_camera,
                                              width, height)


def test_resized_calibration_projects_to_the_resized_image():
    camera = _camera()
    small = camera.resized(32, 24)
    point = [(0.1, 0.05, 1.0)]
    (u, v), = camera.project(point)[0]
    (us, vs), = small.project(point)[0]
    assert us == pytest.approx((u + 0.5) / 2 - 0.5) and vs == pytest.approx((v + 0.5) / 2 - 0.5)


@pytest.mark.parametrize("k, pose", [
    ((100.0, 0, 31.5, 0, 120.0, 23.5, 0, 0), np.eye(4)),               # 8 values
    ((0.0, 0, 31.5, 0, 120.0, 23.5, 0, 0, 1), np.eye(4)),              # fx = 0
    (K, np.diag([2.0, 1.0, 1.0, 1.0])),                                # not a rotation
    (K, np.eye(3)),                                                     # not 4x4
])
def test_invalid_calibration_is_a_config_error(k, pose):
    with pytest.raises(ConfigError):
        CameraCalibration.from_camera_info(k, pose, 64, 48)


def test_quaternion_matches_the_rotation_it_encodes():
    half = math.sqrt(0.5)
    pose = EndEffectorPose.from_quaternion((0, 0, 0), (0, 0, half, half), 0.0)  # +90 deg about z
    np.testing.assert_allclose(pose.rotation_matrix, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
