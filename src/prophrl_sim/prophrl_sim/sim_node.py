"""sim_node: a simulated arm (ArmSim) behind the topics and command interfaces of the real drivers.

Run: ``ros2 run prophrl_sim sim_node --ros-args -p robot:=panda_sim -p task:=lift -p seed:=0``

Publishes (all poses in the robot config's base_frame)
- /camera/image_raw (sensor_msgs/Image, rgb8) and /camera/camera_info, paced at camera_rate_hz,
  reliable with depth 2 (a best-effort subscriber also matches); frame camera_optical_frame.
- /camera/pose (geometry_msgs/PoseStamped, latched): the optical frame's pose; the extrinsics
  (tf2 is not available here, so they are not on /tf).
- /joint_states (sensor_msgs/JointState): the arm joints (RobotConfig.joint_names) then the
  gripper's, every control period; also the robot config's ee_pose_topic (PoseStamped, the TCP).
- /prophrl/episode (prophrl_msgs/EpisodeEvent): START on every reset (STOP for the episode it
  ends), SUCCESS once when the task first succeeds.
- /prophrl/instruction (std_msgs/String, latched), e.g. "lift the red cube".
- /prophrl/sim/object_poses (geometry_msgs/PoseArray): SIM-ONLY ground truth for scripted experts
  and evaluation, the task's objects in prophrl_sim.tasks.TASKS[task].object_names order
  (lift: cube; stack: cube_a, cube_b; door: handle, hinge).
- /clock (rosgraph_msgs/Clock) when realtime is false.

Subscribes (the robot config's topics)
- twist_topic (geometry_msgs/TwistStamped, base frame, like MoveIt Servo): the velocity is applied
  every control period until a newer one arrives or twist_timeout_s passes; then the arm holds.
- gripper_topic (std_msgs/Float64): 0 open .. 1 closed, held until the next command.
- joint_trajectory_topic (trajectory_msgs/JointTrajectory, like a JointTrajectoryController): the
  points are followed from the current positions, starting when it arrives (header.stamp is not
  used); joints it does not name keep their positions. The newest twist or trajectory wins.

Services
- ~/reset (std_srvs/Trigger): new episode with the next seed (seed + 1).
- announce_first_episode (default true): false keeps the episode the node starts with silent (no
  START/SUCCESS events), for a collector that starts every recorded episode itself.
- Setting the ``seed`` parameter (``ros2 param set /sim seed 42``) starts an episode with that seed.

Start-up: the node announces that it is ready (prophrl_common.startup) once its scene is built and
its first episode reset; clients wait for that, not for its services to appear. Tests make a slow
cold start with PROPHRL_TEST_SIM_STARTUP_DELAY_S (seconds slept before the first reset, when
its topics and services exist already).

realtime (default true): the sim advances one control period per control period of wall time
(real_time_factor < 1: proportionally slower), or as fast as the machine allows when that is slower.
false: it steps as fast as it can.

The sim keeps its own clock: it advances exactly one control period per step. Message stamps, command
timeouts and trajectory timing all use it, so a sim that a busy machine cannot step in real time still runs
each command for the same sim time, and a node that times the robot's motion (the scripted expert) reads the
stamps rather than its own clock.
- publish_clock (default false; implied by realtime false): the clock is also published on /clock before
  each step's messages (run the other nodes with use_sim_time). It starts at the wall time when the node
  starts and runs on across episodes, so every rate in a recording is exact however slowly a loaded machine
  steps.
- Otherwise the clock is re-anchored to the wall clock at each episode start (never backwards): its stamps
  equal wall time while the sim keeps up and fall behind it when it cannot.

lockstep_timeout_s (default 0: off; the collect profile sets it): while a command stream is in
progress, a step first waits, up to this much wall time, for the command that answers the state it last
published (a twist stamped at or after that state's time, or a new JointTrajectory). On a busy machine
the commanding nodes answer late; without lockstep the arm would run each command a step or more after it
was due (the scripted expert's lift then fails on ur5e_sim), with it the sim slows down instead and every
command runs at the step it was computed for. A wait that times out ends the stream (the commander
stopped); the next command starts a new one. A real arm does not wait: keep it off where the sim stands
in for one in timing tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import PoseArray, PoseStamped, TwistStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock as SteadyClock
from rclpy.clock import ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from prophrl_common.images import numpy_to_image
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config
from prophrl_msgs.msg import EpisodeEvent
from prophrl_sim import OBJECT_POSES_TOPIC
from prophrl_sim.arm_sim import ArmSim, Pose
from prophrl_sim.tasks import TASKS

CAMERA_FRAME = "camera_optical_frame"
IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _test_startup_delay() -> None:
    """Tests only: a cold start slower than any fixed wait (PROPHRL_TEST_SIM_STARTUP_DELAY_S seconds)."""
    delay_s = float(os.environ.get("PROPHRL_TEST_SIM_STARTUP_DELAY_S", "0") or 0)
    if delay_s > 0:
        time.sleep(delay_s)


def _time_msg(nanoseconds: int) -> Time:
    return Time(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)


def _pose_msg(pose: Pose) -> PoseMsg:
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in pose.position)
    (msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w) = (float(v) for v in pose.quaternion)
    return msg


class JointTrajectoryFollower:
    """Linear interpolation through a JointTrajectory's points, starting from given positions."""

    def __init__(self, msg: JointTrajectory, joint_names: tuple[str, ...], start_positions: np.ndarray,
                 start_time_s: float):
        unknown = sorted(set(msg.joint_names) - set(joint_names))
        if unknown:
            raise ValueError(f"unknown joints {unknown}; this arm has {list(joint_names)}")
        if not msg.points:
            raise ValueError("trajectory has no points")
        columns = [joint_names.index(name) for name in msg.joint_names]
        self.start_time_s = start_time_s
        times, waypoints = [0.0], [np.array(start_positions, float)]
        for point in msg.points:
            if len(point.positions) != len(columns):
                raise ValueError(f"a point has {len(point.positions)} positions for {len(columns)} joints")
            if not np.all(np.isfinite(point.positions)):
                raise ValueError("a point has non-finite positions")
            t = point.time_from_start.sec + point.time_from_start.nanosec * 1e-9
            if t < times[-1]:
                raise ValueError("points must have non-decreasing time_from_start")
            waypoint = waypoints[-1].copy()
            waypoint[columns] = point.positions
            times.append(t)
            waypoints.append(waypoint)
        self._times = np.array(times)
        self._waypoints = np.array(waypoints)

    def positions_at(self, time_s: float) -> np.ndarray:
        t = time_s - self.start_time_s
        return np.array([np.interp(t, self._times, self._waypoints[:, j]) for j in range(self._waypoints.shape[1])])


@dataclasses.dataclass(frozen=True)
class SimNodeParameters:
    robot: str = parameter("panda_sim", "robot name in config/robots (a sim robot: panda_sim | ur5e_sim) or a path "
                                        "to a robot YAML", required=True)
    task: str = parameter("lift", "the task", choices=tuple(TASKS))
    seed: int = parameter(0, "episode seed: object placement, colours, camera jitter; setting it at run time starts "
                             "a new episode (~/reset starts one with seed + 1)")
    camera: str = parameter("", "agentview | frontview | sideview | birdview; empty: the task's default view")
    image_width: int = parameter(128, "camera image width", minimum=8)
    image_height: int = parameter(128, "camera image height", minimum=8)
    camera_rate_hz: float = parameter(20.0, "camera frames per second", minimum=0.0, exclusive_minimum=True)
    antialias: bool = parameter(False, "4x multisample anti-aliasing: smoother edges, about twice the render time "
                                       "on a CPU")
    camera_position_jitter_m: float = parameter(0.0, "per-seed random offset of the camera position (0: none)",
                                                minimum=0.0)
    camera_rotation_jitter_rad: float = parameter(0.0, "per-seed random rotation of the camera (0: none)",
                                                  minimum=0.0)
    twist_timeout_s: float = parameter(0.2, "a twist is applied until a newer one arrives or this much time passes "
                                            "(as MoveIt Servo)", minimum=0.0, exclusive_minimum=True)
    realtime: bool = parameter(True, "one control period of sim per control period of wall time (or as fast as the "
                                     "machine allows, when slower); false: as fast as possible, on sim time "
                                     "published on /clock")
    real_time_factor: float = parameter(1.0, "with realtime: sim seconds per wall second, at most (below 1: a "
                                             "slower sim)", minimum=0.0, exclusive_minimum=True)
    publish_clock: bool = parameter(False, "stamp with sim time and publish it on /clock (always so when realtime "
                                           "is false); run the other nodes with use_sim_time")
    lockstep_timeout_s: float = parameter(0.0, "with realtime: each step waits up to this much wall time for the "
                                               "command answering the last published state while a command "
                                               "stream is in progress (0: never wait)", minimum=0.0)
    announce_first_episode: bool = parameter(True, "publish START for the episode the node starts with (false when "
                                                   "a collector starts the recorded episodes itself)")


class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        declare_parameters(self, SimNodeParameters)
        params = read_parameters(self, SimNodeParameters)
        robot = load_robot_config(params.robot)
        self.robot = robot
        self.task_name = params.task
        seed, camera, width, height = params.seed, params.camera, params.image_width, params.image_height
        self.camera_period_s = 1.0 / params.camera_rate_hz
        self.twist_timeout_s = params.twist_timeout_s
        self.realtime = params.realtime
        real_time_factor = params.real_time_factor
        self.sim_clock = params.publish_clock or not self.realtime
        self._period_ns = round(robot.control_period_s * 1e9)
        self._clock_ns = time.time_ns()  # sim time: advances one control period per step
        self.lockstep_timeout_s = params.lockstep_timeout_s if self.realtime else 0.0
        self._streaming = False        # lockstep: a commander is answering every state
        self._answered = True          # lockstep: a command answered the last published state
        self._waiting_since: float | None = None  # lockstep: wall time the deferred step began waiting
        announce_first = params.announce_first_episode
        self.sim = ArmSim(robot, self.task_name, camera=camera, image_width=width, image_height=height,
                          camera_position_jitter_m=params.camera_position_jitter_m,
                          camera_rotation_jitter_rad=params.camera_rotation_jitter_rad,
                          antialias=params.antialias)
        self.arm_joint_names = tuple(robot.joint_names)

        self._image_pub = self.create_publisher(Image, "/camera/image_raw", IMAGE_QOS)
        self._info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", IMAGE_QOS)
        self._camera_pose_pub = self.create_publisher(PoseStamped, "/camera/pose", LATCHED)
        self._joints_pub = self.create_publisher(JointState, "/joint_states", STATE_QOS)
        self._ee_pub = self.create_publisher(PoseStamped, robot.ee_pose_topic, STATE_QOS)
        self._objects_pub = self.create_publisher(PoseArray, OBJECT_POSES_TOPIC, STATE_QOS)
        self._episode_pub = self.create_publisher(EpisodeEvent, "/prophrl/episode", STATE_QOS)
        self._instruction_pub = self.create_publisher(String, "/prophrl/instruction", LATCHED)
        self._clock_pub = self.create_publisher(Clock, "/clock", STATE_QOS) if self.sim_clock else None
        self.create_subscription(TwistStamped, robot.twist_topic, self._on_twist, STATE_QOS)
        self.create_subscription(Float64, robot.gripper_topic, self._on_gripper, STATE_QOS)
        self.create_subscription(JointTrajectory, robot.joint_trajectory_topic, self._on_trajectory, STATE_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        self._episode_id = ""
        self._episode_succeeded = False
        _test_startup_delay()
        self._reset_episode(seed, announce=announce_first)
        if self.realtime:
            self.create_timer(robot.control_period_s / real_time_factor, self.tick,
                              clock=SteadyClock(clock_type=ClockType.STEADY_TIME))
        pace = f"{real_time_factor:g}x real time" if self.realtime else "as fast as possible"
        self.get_logger().info(
            f"{robot.name} on task {self.task_name!r} ({self.sim.camera} camera {width}x{height}, {pace}"
            f"{', sim time on /clock' if self.sim_clock else ''}); episode {self._episode_id}")

    # ------------------------------------------------------------------ time
    def _now_s(self) -> float:
        """The sim's clock, which times commands (twist timeout, trajectory timing)."""
        return self._clock_ns * 1e-9

    def _stamp(self) -> Time:
        return _time_msg(self._clock_ns)

    # ------------------------------------------------------------------ commands
    def _on_twist(self, msg: TwistStamped) -> None:
        if msg.header.frame_id not in ("", self.robot.base_frame):
            self.get_logger().warning(f"ignoring twist in frame {msg.header.frame_id!r}; expected "
                                      f"{self.robot.base_frame!r}", throttle_duration_sec=5.0)
            return
        linear, angular = msg.twist.linear, msg.twist.angular
        twist = (np.array([linear.x, linear.y, linear.z]), np.array([angular.x, angular.y, angular.z]))
        if not all(np.all(np.isfinite(part)) for part in twist):
            self.get_logger().warning("ignoring non-finite twist", throttle_duration_sec=5.0)
            return
        self._twist = twist
        self._twist_received_s = self._now_s()
        self._trajectory = None
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self._on_command(answers=stamp_ns == 0 or stamp_ns >= self._clock_ns)

    def _on_gripper(self, msg: Float64) -> None:
        if not np.isfinite(msg.data):
            self.get_logger().warning("ignoring non-finite gripper command", throttle_duration_sec=5.0)
            return
        self._gripper = float(np.clip(msg.data, 0.0, 1.0))

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        current = self.sim.observe().joint_positions[: len(self.arm_joint_names)]
        try:
            self._trajectory = JointTrajectoryFollower(msg, self.arm_joint_names, current, self._now_s())
        except ValueError as exc:
            self.get_logger().error(f"rejected JointTrajectory: {exc}")
            return
        self._twist = None
        self._on_command(answers=True)

    def _on_command(self, answers: bool) -> None:
        """Lockstep: a command starts (or continues) the stream; one that answers the last state releases a
        deferred step."""
        self._streaming = True
        if answers:
            self._answered = True
            if self._waiting_since is not None:
                self._waiting_since = None
                self.tick()

    # ------------------------------------------------------------------ episodes
    def _reset_episode(self, seed: int, announce: bool = True) -> None:
        if self._episode_id and self._episode_announced:
            self._publish_event(EpisodeEvent.STOP, success=self._episode_succeeded, message="reset")
        observation = self.sim.reset(seed)
        if self.realtime and not self.sim_clock:
            self._clock_ns = max(self._clock_ns, time.time_ns())
        self._twist = None
        self._twist_received_s = -np.inf
        self._trajectory = None
        self._streaming, self._answered, self._waiting_since = False, True, None
        self._gripper = 0.0
        self._last_image_s = -np.inf
        started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self._episode_id = f"{self.robot.name}-{self.task_name}-seed{seed}-{started}"
        self._episode_succeeded = False
        self._instruction_pub.publish(String(data=self.sim.instruction))
        camera_pose = PoseStamped(pose=_pose_msg(self.sim.camera_model().pose))
        camera_pose.header.stamp, camera_pose.header.frame_id = self._stamp(), self.robot.base_frame
        self._camera_pose_pub.publish(camera_pose)
        self._episode_announced = announce
        if announce:
            self._publish_event(EpisodeEvent.START, success=False, message=f"seed {seed}")
        self._publish_state(observation)

    def _publish_event(self, event: int, success: bool, message: str) -> None:
        msg = EpisodeEvent(event=event, episode_id=self._episode_id, instruction=self.sim.instruction,
                           robot=self.robot.name, task=self.task_name, success=success, message=message)
        msg.header.stamp = self._stamp()
        self._episode_pub.publish(msg)

    def _on_reset(self, request, response):
        seed = self.sim.seed + 1
        self.set_parameters([Parameter("seed", Parameter.Type.INTEGER, seed)])  # its callback starts the episode
        response.success, response.message = True, f"episode {self._episode_id} (seed {seed})"
        return response

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        for changed in parameters:
            if changed.name == "seed":  # the same seed again restarts that episode
                self._reset_episode(int(changed.value))

    # ------------------------------------------------------------------ stepping
    def _defer_step(self) -> bool:
        """Lockstep: whether this step waits for the command answering the last state (at most
        lockstep_timeout_s of wall time; a timeout ends the stream)."""
        if self.lockstep_timeout_s <= 0.0 or not self._streaming or self._answered:
            return False
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        if time.monotonic() - self._waiting_since < self.lockstep_timeout_s:
            return True
        self._streaming, self._waiting_since = False, None
        return False

    def tick(self) -> None:
        """Advance one control period with the active command and publish the new state."""
        if self._defer_step():
            return
        self._waiting_since = None
        self._answered = False
        now = self._now_s()
        if self._trajectory is not None:
            self.sim.step_joint_positions(self._trajectory.positions_at(now), self._gripper)
        elif self._twist is not None and now - self._twist_received_s <= self.twist_timeout_s:
            self.sim.step_ee_velocity(*self._twist, self._gripper)
        else:
            self.sim.step_ee_delta(np.zeros(3), np.zeros(3), self._gripper)
        self._clock_ns += self._period_ns
        observation = self.sim.observe()
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=self._stamp()))
        self._publish_state(observation)
        if observation.success and not self._episode_succeeded:
            self._episode_succeeded = True
            if self._episode_announced:
                self._publish_event(EpisodeEvent.SUCCESS, success=True,
                                    message=f"succeeded after {observation.time_s:.2f} s")
        if observation.time_s - self._last_image_s >= self.camera_period_s - 1e-9:
            self._last_image_s = observation.time_s
            self._publish_camera()

    def _publish_state(self, observation) -> None:
        stamp = self._stamp()
        joints = JointState(name=list(observation.joint_names), position=observation.joint_positions.tolist(),
                            velocity=observation.joint_velocities.tolist())
        joints.header.stamp = stamp
        self._joints_pub.publish(joints)
        ee = PoseStamped(pose=_pose_msg(observation.ee_pose))
        ee.header.stamp, ee.header.frame_id = stamp, self.robot.base_frame
        self._ee_pub.publish(ee)
        objects = PoseArray(poses=[_pose_msg(observation.object_poses[n]) for n in self.sim.task.object_names])
        objects.header.stamp, objects.header.frame_id = stamp, self.robot.base_frame
        self._objects_pub.publish(objects)

    def _publish_camera(self) -> None:
        stamp = self._stamp()
        image = numpy_to_image(self.sim.render(), "rgb8", stamp=stamp, frame_id=CAMERA_FRAME)
        camera = self.sim.camera_model()
        info = CameraInfo(width=camera.width, height=camera.height, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=camera.k, r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], p=camera.p)
        info.header = image.header
        try:
            self._image_pub.publish(image)
            self._info_pub.publish(info)
        except RCLError as exc:  # back-pressure from a slow reliable subscriber: drop this frame
            self.get_logger().warning(f"camera frame dropped: {exc}", throttle_duration_sec=5.0)

    def destroy_node(self) -> None:
        self.sim.close()
        super().destroy_node()


def _step_unless_realtime(node: SimNode) -> bool:
    """keep_running of run_node: with realtime false, one tick between spins (as fast as it can)."""
    if not node.realtime:
        node.tick()
    return True


def main(argv=None) -> int:
    return run_node(SimNode, argv, keep_running=_step_unless_realtime,
                    spin_timeout_s=lambda node: 0.1 if node.realtime else 0.0)


if __name__ == "__main__":
    sys.exit(main())
