"""sim_node and scripted_expert_node as separate processes over DDS (no mocks).

The test process stands where the real stack's nodes would: it reads the sim's camera, joint
states and poses, commands it like MoveIt Servo / a JointTrajectoryController, and watches the
episode events while the scripted expert closes the loop.
"""

import time

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseArray, PoseStamped, TwistStamped
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from prophrl_common.chunks import chunk_to_array
from prophrl_common.images import image_to_numpy
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk, EpisodeEvent

isolate_ros_domain()  # before rclpy.init; the child processes inherit it

ROBOT = load_robot_config("panda_sim")
TWIST_TIMEOUT_S = 0.3
STARTUP_TIMEOUT_S = 120.0  # robosuite import + scene creation, on a busy 2-core machine (an upper bound only)
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
# The TCP pose keeps only its newest message: after the probe stalls, its next read is where the arm is now.
NEWEST = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Probe:
    """A node recording what the sim and the expert publish and commanding the sim's arm."""

    def __init__(self):
        self.node = Node("sim_node_test_probe")
        self.latest = {}
        self.camera_stamps = {"/camera/image_raw": set(), "/camera/camera_info": set()}  # (sec, nanosec) seen
        self.events: list[tuple[float, EpisodeEvent]] = []
        for topic, msg_type, qos in (
            ("/camera/image_raw", Image, RELIABLE), ("/camera/camera_info", CameraInfo, RELIABLE),
            ("/camera/pose", PoseStamped, LATCHED), ("/joint_states", JointState, RELIABLE),
            (ROBOT.ee_pose_topic, PoseStamped, NEWEST), ("/prophrl/sim/object_poses", PoseArray, RELIABLE),
            ("/prophrl/instruction", String, LATCHED), ("/prophrl/action_chunk", ActionChunk, RELIABLE),
        ):
            self.node.create_subscription(msg_type, topic, lambda msg, topic=topic: self._record(topic, msg), qos)
        self.node.create_subscription(EpisodeEvent, "/prophrl/episode",
                                      lambda msg: self.events.append((time.monotonic(), msg)), RELIABLE)
        self.twist_pub = self.node.create_publisher(TwistStamped, ROBOT.twist_topic, RELIABLE)
        self.trajectory_pub = self.node.create_publisher(JointTrajectory, ROBOT.joint_trajectory_topic, RELIABLE)

    def _record(self, topic: str, msg) -> None:
        self.latest[topic] = msg
        if topic in self.camera_stamps:
            self.camera_stamps[topic].add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def sim_time_s(self) -> float:
        """The sim's clock: the stamp of its latest joint state."""
        stamp = self.latest["/joint_states"].header.stamp
        return stamp.sec + stamp.nanosec * 1e-9

    def spin(self, sim_seconds: float, every_tick=None, until=None) -> None:
        """Spin until the sim's clock has advanced sim_seconds (on a busy machine that takes longer) or until()
        holds, calling every_tick() once per sim tick seen, as a driver streaming commands at the control rate
        would."""
        end = self.sim_time_s() + sim_seconds
        deadline = time.monotonic() + 60.0 + 20.0 * sim_seconds  # only against a sim that stopped
        last_tick = None
        while self.sim_time_s() < end - 1e-6 and not (until is not None and until()):
            assert time.monotonic() < deadline, f"the sim's clock stopped at {self.sim_time_s():.3f} s"
            if every_tick is not None and self.sim_time_s() != last_tick:
                last_tick = self.sim_time_s()
                every_tick()
            rclpy.spin_once(self.node, timeout_sec=ROBOT.control_period_s)

    def spin_until_at_rest(self, within_s: float, still_s: float = 0.5, tolerance: float = 0.001) -> np.ndarray:
        """Spin until the TCP has moved less than `tolerance` over the last still_s of sim time; the position then.
        Fails if it has not come to rest within within_s of sim time."""
        history: list[tuple[float, np.ndarray]] = []

        def at_rest() -> bool:
            history.append((self.ee_time_s(), self.ee_position()))
            recent = [p for t, p in history if t >= history[-1][0] - still_s]
            span = history[-1][0] - history[0][0]
            return span >= still_s and np.ptp(np.array(recent), axis=0).max() < tolerance

        self.spin(within_s, until=at_rest)
        assert at_rest(), f"the arm did not come to rest within {within_s} s of sim time: {history[-1]}"
        return history[-1][1]

    def wait_for(self, predicate, timeout: float) -> bool:
        return spin_until(self.node, predicate, timeout)

    def ee_time_s(self) -> float:
        """The stamp of the latest TCP pose (the sim's clock)."""
        stamp = self.latest[ROBOT.ee_pose_topic].header.stamp
        return stamp.sec + stamp.nanosec * 1e-9

    def ee_position(self) -> np.ndarray:
        p = self.latest[ROBOT.ee_pose_topic].pose.position
        return np.array([p.x, p.y, p.z])

    def joint_positions(self) -> dict[str, float]:
        msg = self.latest["/joint_states"]
        return dict(zip(msg.name, msg.position))

    def send_twist(self, vz: float) -> None:
        twist = TwistStamped()
        twist.header.stamp = self.node.get_clock().now().to_msg()
        twist.header.frame_id = ROBOT.base_frame
        twist.twist.linear.z = vz
        self.twist_pub.publish(twist)

    def events_since(self, since: float, event: int) -> list[EpisodeEvent]:
        return [msg for received, msg in self.events if received >= since and msg.event == event]


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    probe = Probe()
    yield probe
    probe.node.destroy_node()
    rclpy.shutdown()


def sim_argv(robot: str, *params: str) -> list[str]:
    return python_module_argv("prophrl_sim.sim_node", "-p", f"robot:={robot}", "-p", "task:=lift", "-p", "seed:=0",
                              "-p", f"twist_timeout_s:={TWIST_TIMEOUT_S}", *params)


def expert_argv(robot: str, output: str) -> list[str]:
    return python_module_argv("prophrl_sim.scripted_expert_node", "-p", f"robot:={robot}", "-p", "task:=lift",
                              "-p", f"output:={output}")


@pytest.fixture(scope="class")
def sim(probe):
    """Panda sim + the expert publishing ActionChunks (no executor: they do not move the arm)."""
    with node_process(sim_argv("panda_sim")) as sim, node_process(expert_argv("panda_sim", "action_chunk")) as expert:
        started = probe.wait_for(lambda: {"/camera/image_raw", "/prophrl/action_chunk"} <= set(probe.latest),
                                 STARTUP_TIMEOUT_S)
        assert started, sim.output() + expert.output()
        yield sim


class TestSimNodeInterfaces:
    def test_publishes_what_the_real_drivers_publish(self, probe, sim):
        topics = {"/camera/image_raw", "/camera/camera_info", "/camera/pose", "/joint_states", ROBOT.ee_pose_topic,
                  "/prophrl/sim/object_poses", "/prophrl/instruction"}
        assert probe.wait_for(lambda: topics <= set(probe.latest), 30), sorted(topics - set(probe.latest))
        image = probe.latest["/camera/image_raw"]
        assert (image.height, image.width, image.encoding) == (128, 128, "rgb8")
        assert image_to_numpy(image).shape == (128, 128, 3)
        info = probe.latest["/camera/camera_info"]
        assert (info.height, info.width) == (128, 128) and info.k[0] > 0 and info.k[2] == 64.0
        assert info.header.frame_id == image.header.frame_id == "camera_optical_frame"
        # a driver stamps each frame's camera_info with the frame's stamp; the latest of each may be one frame apart
        stamps = probe.camera_stamps
        assert probe.wait_for(lambda: stamps["/camera/image_raw"] & stamps["/camera/camera_info"], 10), \
            "no camera_info carries the stamp of an image"
        assert probe.latest["/camera/pose"].header.frame_id == ROBOT.base_frame
        joints = probe.latest["/joint_states"]
        assert tuple(joints.name[:ROBOT.num_joints]) == ROBOT.joint_names
        assert {"panda_finger_joint1", "panda_finger_joint2"} <= set(joints.name)
        assert len(joints.position) == len(joints.name)
        ee = probe.latest[ROBOT.ee_pose_topic]
        assert ee.header.frame_id == ROBOT.base_frame
        assert np.all(np.array(ROBOT.workspace_min) < probe.ee_position())
        assert np.all(probe.ee_position() < np.array(ROBOT.workspace_max))
        assert len(probe.latest["/prophrl/sim/object_poses"].poses) == 1
        assert probe.latest["/prophrl/instruction"].data.startswith("lift the ")

    def test_scripted_expert_publishes_action_chunks(self, probe, sim):
        chunk = probe.latest["/prophrl/action_chunk"]
        actions = chunk_to_array(chunk)
        assert chunk.action_space == "ee_delta_7d" and actions.shape == (10, 7)
        assert chunk.control_period_s == pytest.approx(ROBOT.control_period_s)
        assert chunk.instruction == probe.latest["/prophrl/instruction"].data

    def test_twist_moves_the_arm_and_stops_after_the_timeout(self, probe, sim):
        assert probe.wait_for(lambda: probe.twist_pub.get_subscription_count() > 0, 30)
        assert probe.wait_for(lambda: {ROBOT.ee_pose_topic, "/joint_states"} <= set(probe.latest), 30)
        start, since = probe.ee_position(), probe.ee_time_s()
        # 0.1 m/s up, streamed once per sim tick seen. On a loaded machine the probe can miss ticks for longer than
        # the twist timeout and the arm then holds for a while, so the stream runs until the arm has risen 6 cm
        # (0.6 s of motion) rather than for a fixed span of sim time.
        probe.spin(10.0, every_tick=lambda: probe.send_twist(0.1),
                   until=lambda: probe.ee_position()[2] - start[2] > 0.06)
        raised, elapsed = probe.ee_position(), probe.ee_time_s() - since
        assert raised[2] - start[2] > 0.06, (start, raised, elapsed)
        assert raised[2] - start[2] < 0.1 * elapsed + 0.01, (start, raised, elapsed)  # never faster than commanded
        assert np.linalg.norm(raised[:2] - start[:2]) < 0.01, (start, raised)  # straight up

        # No more twists: the arm coasts for twist_timeout_s, then holds.
        stopped = probe.spin_until_at_rest(within_s=3.0)
        # It coasts for the timeout, plus the delivery of the last twist and the TCP's lag behind its goal: well
        # short of the rise to the workspace's top had the twist not timed out.
        assert stopped[2] - raised[2] < 0.08, (raised, stopped)

        probe.send_twist(0.1)  # a single twist moves the arm for twist_timeout_s of sim time only
        assert probe.wait_for(lambda: probe.ee_position()[2] - stopped[2] > 0.002, 30), "a single twist did not move"
        moved = probe.spin_until_at_rest(within_s=3.0)[2] - stopped[2]
        assert 0.5 * 0.1 * TWIST_TIMEOUT_S < moved < 0.1 * (TWIST_TIMEOUT_S + 0.1) + 0.005, moved

    def test_joint_trajectory_is_followed(self, probe, sim):
        assert probe.wait_for(lambda: probe.trajectory_pub.get_subscription_count() > 0, 30)
        start = probe.joint_positions()["panda_joint1"]
        trajectory = JointTrajectory(joint_names=["panda_joint1"])
        trajectory.points = [JointTrajectoryPoint(positions=[start + 0.2])]
        trajectory.points[0].time_from_start.sec = 1
        probe.trajectory_pub.publish(trajectory)
        probe.spin(2.0)
        assert probe.joint_positions()["panda_joint1"] == pytest.approx(start + 0.2, abs=0.02)

    def test_reset_service_and_seed_parameter_start_episodes(self, probe, sim):
        reset = probe.node.create_client(Trigger, "/sim/reset")
        assert reset.wait_for_service(timeout_sec=10)
        since, stamp_before = time.monotonic(), probe.sim_time_s()
        future = reset.call_async(Trigger.Request())
        assert probe.wait_for(future.done, 30) and future.result().success, sim.output()
        assert probe.wait_for(lambda: probe.events_since(since, EpisodeEvent.START), 30)
        # The new episode's sim time starts at 0, and the sim's clock still never goes backwards.
        start_stamp = probe.events_since(since, EpisodeEvent.START)[0].header.stamp
        assert start_stamp.sec + start_stamp.nanosec * 1e-9 >= stamp_before
        (start,) = probe.events_since(since, EpisodeEvent.START)
        (stop,) = probe.events_since(since, EpisodeEvent.STOP)
        assert start.episode_id != stop.episode_id and "seed1" in start.episode_id
        assert (start.robot, start.task) == ("panda_sim", "lift") and start.instruction.startswith("lift the ")

        set_parameters = probe.node.create_client(SetParameters, "/sim/set_parameters")
        assert set_parameters.wait_for_service(timeout_sec=10)
        since = time.monotonic()
        seed = ParameterMsg(name="seed", value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=7))
        future = set_parameters.call_async(SetParameters.Request(parameters=[seed]))
        assert probe.wait_for(future.done, 30) and future.result().results[0].successful
        assert probe.wait_for(lambda: probe.events_since(since, EpisodeEvent.START), 30)
        assert "seed7" in probe.events_since(since, EpisodeEvent.START)[0].episode_id


def test_lockstep_runs_every_answered_command_at_its_step_and_a_silent_commander_ends_the_stream(probe):
    """A commander that answers each state 3 control periods late (a busy machine): in lockstep the sim takes
    exactly one step per answer, each twist in force from the state it answers; when the answers stop, the sim
    waits once for lockstep_timeout_s and then runs on at its own pace."""
    delay_s, timeout_s = 3 * ROBOT.control_period_s, 1.0
    launched_s = probe.node.get_clock().now().nanoseconds * 1e-9
    with node_process(sim_argv("panda_sim", "-p", f"lockstep_timeout_s:={timeout_s}")) as sim:
        assert probe.wait_for(lambda: "/joint_states" in probe.latest and probe.sim_time_s() >= launched_s,
                              STARTUP_TIMEOUT_S), sim.output()
        assert probe.wait_for(lambda: probe.twist_pub.get_subscription_count() > 0, 30), sim.output()
        seen: list[float] = []  # sim time of every state answered
        while len(seen) < 12:
            state_s = probe.sim_time_s()
            if seen and state_s == seen[-1]:
                rclpy.spin_once(probe.node, timeout_sec=0.01)
                continue
            seen.append(state_s)
            time.sleep(delay_s)  # the late answer, stamped with the state it answers
            twist = TwistStamped()
            twist.header.stamp.sec, twist.header.stamp.nanosec = divmod(round(state_s * 1e9), 1_000_000_000)
            twist.header.frame_id, twist.twist.linear.z = ROBOT.base_frame, 0.05
            probe.twist_pub.publish(twist)
            assert probe.wait_for(lambda: probe.sim_time_s() != state_s, 30), sim.output()
        steps = np.diff(seen[2:]) / ROBOT.control_period_s  # the first answers start the stream
        assert np.allclose(steps, 1.0, atol=1e-3), f"sim steps between answered states: {steps}"

        stopped_s, stopped_wall = probe.sim_time_s(), time.monotonic()
        assert probe.wait_for(lambda: probe.sim_time_s() >= stopped_s + 20 * ROBOT.control_period_s - 1e-6, 60), \
            sim.output()
        # One wait of timeout_s, then one step per control period (a busy machine is only slower): far less than
        # 20 timeouts, which a sim waiting at every step would take.
        assert time.monotonic() - stopped_wall < 5 * timeout_s + 20 * ROBOT.control_period_s * 4, sim.output()


@pytest.mark.slow
@pytest.mark.parametrize("robot", ["panda_sim", "ur5e_sim"])
def test_scripted_expert_lifts_the_cube_over_dds(probe, robot):
    since = time.monotonic()
    launched_s = probe.node.get_clock().now().nanoseconds * 1e-9
    # Twist output closes the loop through DDS once per sim step; in lockstep the sim waits for the expert's answer
    # to each state, so a busy machine slows the sim instead of lagging the commands (a step or two of lag make the
    # UR5e expert overshoot).
    with node_process(sim_argv(robot, "-p", "lockstep_timeout_s:=2.0")) as sim, \
            node_process(expert_argv(robot, "twist")) as expert:
        def succeeded():
            return any(event.robot == robot for event in probe.events_since(since, EpisodeEvent.SUCCESS))

        # This sim's first joint state starts its clock (an earlier sim's may still be queued: its stamps are older
        # than this sim's start, since a sim's clock never runs ahead of the wall clock).
        joint_names = load_robot_config(robot).joint_names
        assert probe.wait_for(lambda: "/joint_states" in probe.latest and probe.sim_time_s() >= launched_s and
                              tuple(probe.latest["/joint_states"].name[:len(joint_names)]) == joint_names,
                              STARTUP_TIMEOUT_S), sim.output()
        started = probe.sim_time_s()
        # The expert needs about 3 s of sim time; 20 s means it is lost (a busy machine only slows the sim down).
        probe.wait_for(lambda: succeeded() or probe.sim_time_s() - started > 20.0, 600)
        assert succeeded(), (f"no SUCCESS after {probe.sim_time_s() - started:.1f} s of sim time; ee "
                             f"{probe.ee_position()}, objects {probe.latest['/prophrl/sim/object_poses'].poses}\n"
                             + sim.output() + expert.output())
    # (The START published as the sim comes up may precede discovery, so it is not required here.)
    success = next(e for e in probe.events_since(since, EpisodeEvent.SUCCESS) if e.robot == robot)
    assert success.success and success.task == "lift" and success.episode_id.startswith(f"{robot}-lift-seed0-")
    assert success.instruction.startswith("lift the ")
