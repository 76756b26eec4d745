"""A physics-simulated arm (robosuite on MuJoCo) behind the command interfaces of the real drivers.

Pure Python (no ROS). One ArmSim holds one robosuite scene: a Franka Panda or UR5e (from
RobotConfig.sim_model) at a table, with one task (see tasks.py).

Frames and conventions
- Everything public is in the robot's base frame (robosuite's ``robot0_base`` body, which is the
  arm's mounting flange: panda_link0 / UR base_link). robosuite itself reports world-frame values;
  the base sits at world (-0.56, 0, 0.912) with the same axes, so the table top is at base z=-0.112.
- The end-effector pose is the gripper's grasp site (the TCP between the fingers).
- Quaternions are (x, y, z, w), as in ROS.
- Rotation deltas/velocities are rotation vectors about the base axes (the ee_delta_7d
  droll/dpitch/dyaw and a MoveIt Servo twist's angular part).
- Gripper command 0 = open .. 1 = closed. The simulated grippers are binary with a finite speed
  (robosuite's GRIP controller): above 0.5 the fingers close, below 0.5 they open, 0.5 holds them.
- Joints: the arm's, named and ordered as RobotConfig.joint_names, then the gripper's, named like
  the real drivers name them (panda_finger_joint1/2, both opening positively as on a Franka; the
  Robotiq 2F-85's finger_joint and its linkage joints).

Control
- End-effector deltas run robosuite's OSC_POSE controller in delta mode, base frame, with its
  goal accumulating the commanded deltas ("desired" goal update): a commanded 1 cm moves the TCP
  1 cm once the controller has settled (~0.25 s), and zero deltas hold the pose. The goal is
  kept within MAX_GOAL_LAG_M / MAX_GOAL_LAG_RAD of the TCP, so pushing against an obstacle does
  not wind it up.
- Joint targets run robosuite's JOINT_POSITION controller (absolute targets) on the same scene:
  the arm's controller is swapped at run time, so a JointTrajectory and a twist may alternate.

Images are rendered with mujoco.Renderer, which returns rows top-first (robosuite's own camera
observations are bottom-first; they are not used here).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import weakref

import mujoco
import numpy as np
import robosuite
from robosuite.controllers import controller_factory, load_composite_controller_config
from scipy.spatial.transform import Rotation

from prophrl_common.robots import RobotConfig, load_robot_config
from prophrl_sim.tasks import Task, get_task

CAMERAS = ("agentview", "frontview", "sideview", "birdview")
ARM = "right"  # robosuite's name for a single arm
OSC_KP = 300.0  # stiffer than robosuite's 150 so the TCP follows commanded motion within ~3 steps
JOINT_KP = 150.0
MAX_GOAL_LAG_M = 0.05
MAX_GOAL_LAG_RAD = 0.3
SETTLE_STEPS = 5
VISIBLE_GEOM_GROUPS = (0, 1, 0, 0, 0, 0)  # robosuite's visual meshes only (group 0 holds collision shapes)
# robosuite's Panda models the second finger with a negative range; franka_ros2 reports both
# fingers as positive distances, and so does this sim.
_NEGATED_GRIPPER_JOINTS = {"Panda": ("gripper0_right_finger_joint2",)}
# Random draws for one episode come from independent streams of the seed, so e.g. turning on
# camera jitter does not change where objects are placed.
_STREAM_PLACEMENT, _STREAM_COLOURS, _STREAM_CAMERA = 1, 2, 3

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pose:
    position: np.ndarray  # (3,) metres
    quaternion: np.ndarray  # (4,) x, y, z, w

    @property
    def vector(self) -> np.ndarray:
        """(7,) x y z qx qy qz qw: the pose as ImaginationStart.ee_pose and transforms.policy_state take it."""
        return np.concatenate([self.position, self.quaternion])


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics (pixels) and the optical frame's pose in the base frame.

    The optical frame follows the ROS convention: z forward, x right, y down.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    pose: Pose

    @property
    def k(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclasses.dataclass(frozen=True)
class SimObservation:
    time_s: float
    joint_names: tuple[str, ...]  # the arm's (RobotConfig.joint_names), then the gripper's
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    ee_pose: Pose
    object_poses: dict[str, Pose]  # in Task.object_names order
    success: bool


def _rotation_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(matrix).as_quat()  # x, y, z, w


def _reseed(generator: np.random.Generator, seed_sequence) -> None:
    """Re-seed a generator in place (robosuite's samplers keep a reference to it)."""
    generator.bit_generator.state = np.random.default_rng(seed_sequence).bit_generator.state


class ArmSim:
    """One simulated arm at a table with a task; reset(seed) starts a reproducible episode."""

    def __init__(self, robot: RobotConfig | str = "panda_sim", task: str | Task = "lift", *,
                 camera: str = "", image_width: int = 128, image_height: int = 128,
                 camera_position_jitter_m: float = 0.0, camera_rotation_jitter_rad: float = 0.0,
                 antialias: bool = False):
        self.robot = robot if isinstance(robot, RobotConfig) else load_robot_config(robot)
        if not self.robot.sim_model:
            raise ValueError(f"robot {self.robot.name} has no sim_model; it is not a simulated robot")
        self.task = task if isinstance(task, Task) else get_task(task)
        camera = camera or self.task.default_camera
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; available: {CAMERAS}")
        if image_width <= 0 or image_height <= 0:
            raise ValueError(f"image size must be positive, got {image_width}x{image_height}")
        self.camera = camera
        self.camera_position_jitter_m = float(camera_position_jitter_m)
        self.camera_rotation_jitter_rad = float(camera_rotation_jitter_rad)
        self.control_period_s = self.robot.control_period_s

        control_freq = 1.0 / self.control_period_s
        controller_config = load_composite_controller_config(robot=self.robot.sim_model)
        controller_config["body_parts"][ARM]["kp"] = OSC_KP
        self._placement_rng = np.random.default_rng(0)
        self.env = robosuite.make(
            self.task.robosuite_env, robots=self.robot.sim_model, controller_configs=controller_config,
            has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, use_object_obs=False,
            control_freq=control_freq, hard_reset=False, ignore_done=True, seed=0,
            **self.task.robosuite_kwargs(self._placement_rng),
        )
        self._model = self.env.sim.model._model
        self._data = self.env.sim.data._data
        self._substeps = int(round(self.control_period_s / self.env.model_timestep))
        if not math.isclose(self._substeps * self.env.model_timestep, self.control_period_s, rel_tol=1e-6):
            raise ValueError(f"control_period_s {self.control_period_s} is not a multiple of the "
                             f"physics step {self.env.model_timestep}")

        self._robot = self.env.robots[0]
        self._gripper = self._robot.gripper[ARM]
        sim_arm_joints = list(self._robot.robot_model.arm_joints)
        if len(sim_arm_joints) != self.robot.num_joints:
            raise ValueError(f"{self.robot.name} lists {self.robot.num_joints} joints but the simulated "
                             f"{self.robot.sim_model} has {len(sim_arm_joints)}")
        sim_joints = sim_arm_joints + list(self._gripper.joints)
        self.joint_names = tuple(self.robot.joint_names) + tuple(
            _gripper_joint_name(self.robot.joint_names, name) for name in self._gripper.joints)
        self._qpos_addrs = [self._model.jnt_qposadr[self.env.sim.model.joint_name2id(j)] for j in sim_joints]
        self._qvel_addrs = [self._model.jnt_dofadr[self.env.sim.model.joint_name2id(j)] for j in sim_joints]
        negated = _NEGATED_GRIPPER_JOINTS.get(self.robot.sim_model, ())
        self._joint_signs = np.array([-1.0 if j in negated else 1.0 for j in sim_joints])
        self._grip_site = self.env.sim.model.site_name2id(self._gripper.important_sites["grip_site"])
        self._base_body = self.env.sim.model.body_name2id(self._robot.robot_model.root_body)
        self._camera_id = self.env.sim.model.camera_name2id(camera)
        self._camera_pos_nominal = self._model.cam_pos[self._camera_id].copy()
        self._camera_quat_nominal = self._model.cam_quat[self._camera_id].copy()

        self._model.vis.global_.offwidth = max(self._model.vis.global_.offwidth, image_width)
        self._model.vis.global_.offheight = max(self._model.vis.global_.offheight, image_height)
        # 4x multisampling doubles the render time on a CPU (llvmpipe) renderer.
        self._model.vis.quality.offsamples = 4 if antialias else 0
        self._renderer = mujoco.Renderer(self._model, height=image_height, width=image_width)
        # Free the GL context when this sim is closed or collected, or else at exit before MuJoCo
        # terminates EGL (its atexit hook was registered with the first context, so ours runs
        # earlier); freeing it after that, in Renderer.__del__, prints errors.
        self._close_renderer = weakref.finalize(self, self._renderer.close)
        self._close_renderer.atexit = False
        atexit.register(self._close_renderer)
        # Reflections cost more than everything else in a CPU (llvmpipe) render; the table loses its sheen.
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._scene_option = mujoco.MjvOption()
        self._scene_option.geomgroup[:] = VISIBLE_GEOM_GROUPS

        self.seed: int | None = None
        self.colours: dict[str, str] = {}
        self.instruction = ""
        self._time_s = 0.0
        self._ee_controller = None
        self._joint_controller = None

    # ----------------------------------------------------------------- episodes
    def reset(self, seed: int) -> SimObservation:
        """Start an episode: arm at home (+ robosuite's small joint noise), objects placed and settled,
        colours, camera pose."""
        self.seed = int(seed)
        _reseed(self.env.rng, [self.seed, 0])
        _reseed(self._placement_rng, [self.seed, _STREAM_PLACEMENT])
        self.env.reset()
        self.colours = self.task.colour_objects(self.env, np.random.default_rng([self.seed, _STREAM_COLOURS]))
        self.instruction = self.task.instruction(self.colours)
        self._place_camera(np.random.default_rng([self.seed, _STREAM_CAMERA]))

        composite = self._robot.composite_controller
        self._ee_controller = composite.part_controllers[ARM]
        self._ee_controller.set_goal_update_mode("desired")
        self._ee_controller.goal_pos = self._ee_controller.goal_ori = None  # re-anchor at the current pose
        joint_params = dict(composite.part_controller_config[ARM], type="JOINT_POSITION", input_type="absolute",
                            kp=JOINT_KP, damping_ratio=1.0, impedance_mode="fixed", qpos_limits=None)
        self._joint_controller = controller_factory(ARM, "JOINT_POSITION", joint_params)
        # robosuite drops objects from 1 cm above the table; start once they rest.
        for _ in range(SETTLE_STEPS):
            self.step_ee_delta(np.zeros(3), np.zeros(3), 0.0)
        self._time_s = 0.0
        return self.observe()

    def _place_camera(self, rng: np.random.Generator) -> None:
        position = self._camera_pos_nominal + rng.uniform(-1, 1, 3) * self.camera_position_jitter_m
        jitter = Rotation.from_rotvec(rng.uniform(-1, 1, 3) * self.camera_rotation_jitter_rad)
        w, x, y, z = self._camera_quat_nominal
        orientation = Rotation.from_quat([x, y, z, w]) * jitter  # jitter about the camera's own axes
        x, y, z, w = orientation.as_quat()
        self._model.cam_pos[self._camera_id] = position
        self._model.cam_quat[self._camera_id] = [w, x, y, z]

    def _require_episode(self) -> None:
        if self.seed is None:
            raise RuntimeError("call reset(seed) before stepping or observing")

    # ----------------------------------------------------------------- control
    def step_ee_delta(self, translation, rotation, gripper: float) -> None:
        """Move the TCP goal by `translation` (m) and `rotation` (rotation vector, rad), base frame,
        over one control period. Deltas beyond the controller's range (5 cm, 0.5 rad) are clipped."""
        self._require_episode()
        controller = self._use_arm_controller(self._ee_controller)
        delta = np.concatenate([np.asarray(translation, float), np.asarray(rotation, float)])
        if delta.shape != (6,) or not np.all(np.isfinite(delta)):
            raise ValueError(f"need finite 3-vectors for translation and rotation, got {delta}")
        self._advance(np.append(_osc_action_for_delta(controller, delta), _gripper_action(gripper)))
        self._limit_goal_lag(controller)

    def step_ee_velocity(self, linear, angular, gripper: float) -> None:
        """Apply a Cartesian velocity (m/s, rad/s, base frame) for one control period."""
        dt = self.control_period_s
        self.step_ee_delta(np.asarray(linear, float) * dt, np.asarray(angular, float) * dt, gripper)

    def step_joint_positions(self, targets, gripper: float) -> None:
        """Track absolute arm joint targets (RobotConfig.joint_names order) for one control period."""
        self._require_episode()
        targets = np.asarray(targets, float)
        if targets.shape != (self.robot.num_joints,) or not np.all(np.isfinite(targets)):
            raise ValueError(f"need {self.robot.num_joints} finite joint targets, got {targets}")
        targets = np.clip(targets, self.robot.joint_position_lower, self.robot.joint_position_upper)
        self._use_arm_controller(self._joint_controller)
        self._advance(np.append(targets, _gripper_action(gripper)))

    def _use_arm_controller(self, controller):
        composite = self._robot.composite_controller
        if composite.part_controllers[ARM] is not controller:
            composite.part_controllers[ARM] = controller
            # Same as robosuite's load_controller_config: the action layout follows the controllers.
            composite._action_split_indexes.clear()
            composite.setup_action_split_idx()
            if controller is self._ee_controller:
                controller.goal_pos = controller.goal_ori = None
        return controller

    def _advance(self, action: np.ndarray) -> None:
        """robosuite's env.step physics loop, without its observation and reward bookkeeping."""
        for substep in range(self._substeps):
            self.env.sim.step1()
            self._robot.control(action, policy_step=substep == 0)
            self.env.sim.step2()
        mujoco.mj_forward(self._model, self._data)
        self._time_s += self.control_period_s

    def _limit_goal_lag(self, controller) -> None:
        """Keep the OSC goal near the TCP (the controller works in the base frame)."""
        tcp_position = controller.world_to_origin_frame(self._data.site_xpos[self._grip_site])
        lag = controller.goal_pos - tcp_position
        distance = float(np.linalg.norm(lag))
        if distance > MAX_GOAL_LAG_M:
            controller.goal_pos = tcp_position + lag * (MAX_GOAL_LAG_M / distance)
        tcp_rotation = controller.origin_ori.T @ self._data.site_xmat[self._grip_site].reshape(3, 3)
        rotation_lag = Rotation.from_matrix(controller.goal_ori @ tcp_rotation.T).as_rotvec()
        angle = float(np.linalg.norm(rotation_lag))
        if angle > MAX_GOAL_LAG_RAD:
            limited = Rotation.from_rotvec(rotation_lag * (MAX_GOAL_LAG_RAD / angle)).as_matrix()
            controller.goal_ori = limited @ tcp_rotation

    # ----------------------------------------------------------------- observation
    @property
    def time_s(self) -> float:
        return self._time_s

    def _base_transform(self) -> tuple[np.ndarray, np.ndarray]:
        return self._data.xpos[self._base_body].copy(), self._data.xmat[self._base_body].reshape(3, 3).copy()

    def _to_base(self, position: np.ndarray, rotation: np.ndarray) -> Pose:
        base_pos, base_rot = self._base_transform()
        return Pose(base_rot.T @ (position - base_pos), _rotation_to_quaternion(base_rot.T @ rotation))

    def observe(self) -> SimObservation:
        self._require_episode()
        grip_rot = self._data.site_xmat[self._grip_site].reshape(3, 3)
        objects = self.task.object_poses_world(self.env)
        return SimObservation(
            time_s=self._time_s,
            joint_names=self.joint_names,
            joint_positions=self._data.qpos[self._qpos_addrs] * self._joint_signs,
            joint_velocities=self._data.qvel[self._qvel_addrs] * self._joint_signs,
            ee_pose=self._to_base(self._data.site_xpos[self._grip_site].copy(), grip_rot),
            object_poses={name: self._to_base(*objects[name]) for name in self.task.object_names},
            success=bool(self.env._check_success()),
        )

    def render(self) -> np.ndarray:
        """The selected camera's (height, width, 3) uint8 RGB image, top row first."""
        self._require_episode()
        self._renderer.update_scene(self._data, camera=self._camera_id, scene_option=self._scene_option)
        return self._renderer.render()

    def camera_model(self) -> CameraModel:
        height, width = self._renderer.height, self._renderer.width
        fy = 0.5 * height / math.tan(math.radians(self._model.cam_fovy[self._camera_id]) / 2.0)
        # MuJoCo cameras look along -z with y up; the ROS optical frame looks along +z with y down.
        optical_rot = self._data.cam_xmat[self._camera_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        pose = self._to_base(self._data.cam_xpos[self._camera_id].copy(), optical_rot)
        return CameraModel(width=width, height=height, fx=fy, fy=fy, cx=width / 2.0, cy=height / 2.0, pose=pose)

    def close(self) -> None:
        self._close_renderer()
        self.env.close()

    def __enter__(self) -> "ArmSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _osc_action_for_delta(controller, delta: np.ndarray) -> np.ndarray:
    """Invert the OSC's input scaling: action in [input_min, input_max] -> delta in [output_min, output_max]."""
    scale = (controller.output_max - controller.output_min) / (controller.input_max - controller.input_min)
    input_centre = (controller.input_max + controller.input_min) / 2.0
    output_centre = (controller.output_max + controller.output_min) / 2.0
    action = (delta - output_centre) / scale + input_centre
    clipped = np.clip(action, controller.input_min, controller.input_max)
    if not np.allclose(clipped, action):
        log.warning("ee delta %s exceeds the controller's per-step range; clipped", np.round(delta, 4))
    return clipped


def _gripper_action(gripper: float) -> float:
    if not math.isfinite(gripper):
        raise ValueError(f"gripper command must be finite, got {gripper}")
    return float(np.clip(gripper, 0.0, 1.0)) * 2.0 - 1.0


def _gripper_joint_name(arm_joint_names, sim_joint_name: str) -> str:
    """Name a gripper joint like the arm's: the arm joints' common prefix up to '_' + the model's name.

    e.g. panda_joint1.. + gripper0_right_finger_joint1 -> panda_finger_joint1; the UR joints share
    no prefix, so the Robotiq joints keep their own names (finger_joint, ...).
    """
    common = os.path.commonprefix(list(arm_joint_names))
    prefix = common[: common.rfind("_") + 1]
    return prefix + sim_joint_name.removeprefix("gripper0_right_")
