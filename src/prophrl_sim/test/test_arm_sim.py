"""ArmSim: seeded randomisation, end-effector and joint control, observations and camera."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from prophrl_common.robots import load_robot_config
from prophrl_sim.arm_sim import ArmSim
from prophrl_sim.tasks import PALETTE

ROBOTS = ("panda_sim", "ur5e_sim")
# Finger joints as the real grippers' drivers name them: both Franka fingers open positively; the
# Robotiq 2F-85's finger_joint goes from 0 (open) to 0.8 (closed).
FINGERS = {"panda_sim": ("panda_finger_joint1", "panda_finger_joint2"), "ur5e_sim": ("finger_joint",)}
HOLD_STEPS = 20  # ~1 s: the arm settles on its goal well within this


@pytest.fixture(scope="module")
def sims():
    """One lift scene per robot, with camera jitter on; shared by the tests of this module."""
    created = {robot: ArmSim(robot, "lift", camera_position_jitter_m=0.03, camera_rotation_jitter_rad=0.03)
               for robot in ROBOTS}
    yield created
    for sim in created.values():
        sim.close()


def hold(sim, steps=HOLD_STEPS, gripper=0.0):
    for _ in range(steps):
        sim.step_ee_delta(np.zeros(3), np.zeros(3), gripper)
    return sim.observe()


def test_same_seed_same_episode(sims):
    sim = sims["panda_sim"]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.01, 0.01, size=(15, 6))

    def run(seed):
        sim.reset(seed)
        for action in actions:
            sim.step_ee_delta(action[:3], action[3:], 1.0)
        return sim.observe(), sim.render(), sim.instruction

    first_obs, first_image, first_instruction = run(5)
    run(6)  # a different episode in between must leave nothing behind
    again_obs, again_image, again_instruction = run(5)
    np.testing.assert_array_equal(first_obs.joint_positions, again_obs.joint_positions)
    np.testing.assert_array_equal(first_obs.ee_pose.position, again_obs.ee_pose.position)
    np.testing.assert_array_equal(first_obs.object_poses["cube"].position, again_obs.object_poses["cube"].position)
    np.testing.assert_array_equal(first_image, again_image)
    assert first_instruction == again_instruction


def test_seeds_randomise_placement_colour_and_camera(sims):
    sim = sims["panda_sim"]
    cubes, colours, cameras, images = [], set(), [], []
    for seed in range(6):
        observation = sim.reset(seed)
        cubes.append(observation.object_poses["cube"].position)
        colours.add(sim.colours["cube"])
        cameras.append(sim.camera_model().pose.position)
        images.append(sim.render())
        assert sim.instruction == f"lift the {sim.colours['cube']} cube"
    cubes, cameras = np.array(cubes), np.array(cameras)
    assert np.min(np.linalg.norm(cubes[1:, :2] - cubes[0, :2], axis=1)) > 1e-3
    assert np.ptp(cubes[:, 0]) > 0.03 and np.ptp(cubes[:, 1]) > 0.03
    assert len(colours) >= 3
    assert np.min(np.linalg.norm(cameras[1:] - cameras[0], axis=1)) > 1e-3
    assert all(np.abs(image.astype(int) - images[0]).mean() > 1.0 for image in images[1:])


def test_cameras_are_selectable_by_name():
    with ArmSim("panda_sim", "lift", camera="frontview", image_width=64, image_height=48) as front, \
            ArmSim("panda_sim", "lift", camera="sideview", image_width=64, image_height=48) as side:
        front.reset(0)
        side.reset(0)
        assert front.render().shape == side.render().shape == (48, 64, 3)
        assert not np.array_equal(front.render(), side.render())
        assert not np.allclose(front.camera_model().pose.position, side.camera_model().pose.position)
    with pytest.raises(ValueError, match="unknown camera"):
        ArmSim("panda_sim", "lift", camera="ceiling")


@pytest.mark.parametrize("robot", ROBOTS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_centimetre_delta_moves_the_tcp_one_centimetre(sims, robot, axis):
    sim = sims[robot]
    sim.reset(1)
    start = hold(sim).ee_pose.position
    delta = np.zeros(3)
    delta[axis] = 0.01
    sim.step_ee_delta(delta, np.zeros(3), 0.0)
    moved = hold(sim).ee_pose.position - start
    assert moved[axis] == pytest.approx(0.01, abs=0.001)
    assert np.linalg.norm(np.delete(moved, axis)) < 0.0015


@pytest.mark.parametrize("robot", ROBOTS)
def test_velocity_and_rotation_commands(sims, robot):
    sim = sims[robot]
    sim.reset(2)
    start = hold(sim).ee_pose
    for _ in range(10):  # 0.5 s at 0.1 m/s up and 0.2 rad/s about the base z axis
        sim.step_ee_velocity([0.0, 0.0, 0.1], [0.0, 0.0, 0.2], 0.0)
    end = hold(sim).ee_pose
    assert end.position[2] - start.position[2] == pytest.approx(0.05, abs=0.004)
    turn = Rotation.from_quat(end.quaternion) * Rotation.from_quat(start.quaternion).inv()
    np.testing.assert_allclose(turn.as_rotvec(), [0.0, 0.0, 0.1], atol=0.01)


@pytest.mark.parametrize("robot", ROBOTS)
def test_joint_targets_are_reached_and_ee_control_resumes(sims, robot):
    sim = sims[robot]
    config = load_robot_config(robot)
    start = sim.reset(3).joint_positions[: config.num_joints]
    target = start + np.linspace(0.15, -0.15, config.num_joints)
    for _ in range(40):
        sim.step_joint_positions(target, 0.0)
    np.testing.assert_allclose(sim.observe().joint_positions[: config.num_joints], target, atol=0.01)

    before = hold(sim).ee_pose.position
    sim.step_ee_delta([0.0, 0.0, 0.01], np.zeros(3), 0.0)
    assert hold(sim).ee_pose.position[2] - before[2] == pytest.approx(0.01, abs=0.0015)


@pytest.mark.parametrize("robot", ROBOTS)
def test_observation_names_frames_and_gripper(sims, robot):
    sim = sims[robot]
    config = load_robot_config(robot)
    observation = sim.reset(0)
    assert observation.joint_names[: config.num_joints] == config.joint_names
    assert set(FINGERS[robot]) <= set(observation.joint_names[config.num_joints:])
    assert len(observation.joint_positions) == len(observation.joint_names) == len(observation.joint_velocities)
    # Base frame: the table top is 0.112 m below the base, the cube rests on it, the TCP points down.
    cube = observation.object_poses["cube"].position
    assert cube[2] == pytest.approx(-0.112 + 0.021, abs=0.003)
    assert config.workspace_min[0] < cube[0] < config.workspace_max[0]
    assert np.all(np.array(config.workspace_min) < observation.ee_pose.position)
    assert np.all(observation.ee_pose.position < np.array(config.workspace_max))
    approach_axis = Rotation.from_quat(observation.ee_pose.quaternion).as_matrix()[:, 2]
    assert approach_axis[2] < -0.95
    assert not observation.success

    def fingers():
        positions = dict(zip(sim.joint_names, sim.observe().joint_positions))
        return np.array([positions[name] for name in FINGERS[robot]])

    opened = fingers()
    for _ in range(15):
        sim.step_ee_delta(np.zeros(3), np.zeros(3), 1.0)
    closed = fingers()
    if robot == "panda_sim":
        assert np.all(opened > 0.03) and np.all(closed < 0.005)
    else:
        assert opened[0] < 0.05 and closed[0] > 0.4


@pytest.mark.parametrize("robot", ROBOTS)
def test_image_is_upright_and_matches_the_camera_model(sims, robot):
    sim = sims[robot]
    sim.reset(4)
    image = sim.render()
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    # agentview looks over the table at the robot: white table top below, robot and room above.
    assert image[-32:].mean() > image[:32].mean() + 40
    assert image[-16:].mean() > 180

    camera = sim.camera_model()
    assert camera.fy == pytest.approx(64 / math.tan(math.radians(45) / 2))
    rotation = Rotation.from_quat(camera.pose.quaternion).as_matrix()
    cube = rotation.T @ (sim.observe().object_poses["cube"].position - camera.pose.position)
    assert cube[2] > 0  # in front of the camera
    u = camera.fx * cube[0] / cube[2] + camera.cx
    v = camera.fy * cube[1] / cube[2] + camera.cy
    patch = image[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2].reshape(-1, 3).mean(axis=0) / 255
    expected = np.array(PALETTE[sim.colours["cube"]])
    assert np.linalg.norm(patch / patch.max() - expected / expected.max()) < 0.35, (patch, expected)
