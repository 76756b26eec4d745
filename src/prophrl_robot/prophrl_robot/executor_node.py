"""Action-chunk executor: ActionChunk -> safety filter -> the robot's standard command interface.

A thin rclpy adapter around ROS-free cores: :mod:`prophrl_robot.chunk_stepper` (which row is due),
:mod:`prophrl_robot.arm_commands` (which chunks the arm accepts, each row -> a command) and
:mod:`prophrl_robot.safety` (all limit logic lives there).

Run: ``ros2 run prophrl_robot executor_node --ros-args -p robot:=panda_sim`` (or the console
script ``executor_node``, or ``python -m prophrl_robot.executor_node``); params file:
``config/nodes/executor_node.yaml``.

It is a lifecycle node (Nav2 style). With ``autostart`` (default true) it configures and
activates itself, so it works without a lifecycle manager; if that fails (e.g. an unknown
``robot``) it logs one clear error and the process exits with status 2.

Interfaces (defaults):

* subscribes ``/prophrl/action_chunk`` (prophrl_msgs/ActionChunk, reliable): a valid chunk
  replaces the one being executed (receding horizon), one step per ``max(chunk.control_period_s,
  robot.control_period_s)``; a malformed one is rejected with one warning and counted (``rejected_chunks``).
  With ``align_chunks_to_stamp`` (default true) a chunk starts at the row due now: row i is due i steps
  after its header stamp, the time of the observation it was planned from (prophrl_common.chunks), so the
  planner's and the transport's latency do not replay rows the arm has already moved past; a chunk whose
  rows are all past is dropped (``stale_chunks``) and the running one goes on. Each step then takes the
  row due at that step: rows whose time passed while the node was late (a busy machine) are skipped and
  counted (``skipped_rows``), never executed late. An unset stamp (0) or one
  ahead of this node's clock starts at row 0. Turn it off where the stamps are not on this node's clock
  (another machine's unsynchronised clock, or a simulator's time without ``use_sim_time``).
* subscribes the robot's ``ee_pose_topic`` (geometry_msgs/PoseStamped: the simulator's, or
  ee_pose_node's on a real arm) and ``/joint_states`` (sensor_msgs/JointState, mapped by name, extra
  joints ignored) as the current state.
* subscribes ``/prophrl/estop`` (std_msgs/Bool; TRANSIENT_LOCAL and VOLATILE subscriptions so both
  latched and plain publishers reach it): True latches the e-stop (immediate hold, chunks dropped);
  only the ``~/reset_estop`` service (std_srvs/Trigger) releases it.
* publishes, by the robot's ``command_interface``:
  ``twist``: geometry_msgs/TwistStamped on ``twist_topic`` (velocity = filtered delta / step
  duration, frame ``base_frame``) and std_msgs/Float64 on ``gripper_topic`` (0 open .. 1 closed);
  ``joint_trajectory``: trajectory_msgs/JointTrajectory on ``joint_trajectory_topic`` (one point,
  ``time_from_start`` = step duration). ``joint_position`` chunks are sent as JointTrajectory on
  every robot; ``ee_delta`` chunks on a joint_trajectory robot go through IK
  (:mod:`prophrl_robot.ik_backends`: moveit_py with ``moveit_planning_group`` where it is installed,
  else the robot config's ``kinematics``), and are rejected when the robot has neither.
* watchdog: once the chunk is exhausted and no new chunk came within the robot's
  ``watchdog_timeout_s`` of the last executed step, one hold (zero twist / JointTrajectory at the
  measured joint positions) per stop.
* timing (step pacing, watchdog, state freshness) is on the steady clock, or on sim time (/clock) when
  the node runs with ``use_sim_time``.
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period_s``: status
  ``"<node name>: safety"`` with every counter, and the same counters as JSON (std_msgs/String)
  on ``~/safety_counters``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from prophrl_msgs.msg import ActionChunk
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from prophrl_common.chunks import InvalidChunkError, chunk_period_ns, chunk_to_array, rows_due
from prophrl_common.config_io import ConfigError
from prophrl_common.joint_states import JointPositions
from prophrl_common.node_clock import node_seconds
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import RobotConfig, load_robot_config
from prophrl_robot.arm_commands import ArmCommander
from prophrl_robot.chunk_stepper import ChunkStepper
from prophrl_robot.ik_backends import KinematicsIkBackend, MoveItIkBackend, select_ik_backend
from prophrl_robot.safety import SafetyFilter, Watchdog

NODE_COUNTERS = (
    "received_chunks",       # every ActionChunk that arrived
    "accepted_chunks",       # valid chunks that started executing
    "rejected_chunks",       # malformed / incompatible chunks (one warning each)
    "estop_dropped_chunks",  # chunks dropped while the e-stop was engaged
    "inactive_dropped_chunks",  # chunks that arrived while the node was not active
    "preempted_chunks",      # chunks replaced by a newer one before their last step
    "stale_chunks",          # chunks dropped because every row was already due when they arrived
    "completed_chunks",      # chunks executed to their last step
    "skipped_rows",          # rows of aligned chunks not executed because their time passed (the node was late)
    "executed_steps",        # steps taken (commands and per-step holds)
    "hold_commands",         # hold commands published (per-step, watchdog, e-stop, deactivate)
    "watchdog_holds",        # holds commanded by the watchdog
    "estop_engagements",     # times the e-stop latched
    "estop_resets",          # times ~/reset_estop released it
    "callback_errors",       # unexpected exceptions caught by the spin loop (each followed by a hold)
)


@dataclasses.dataclass(frozen=True)
class ExecutorNodeParameters:
    robot: str = parameter("panda_sim", "robot name in config/robots or a YAML path: joints, limits, workspace, "
                                        "command interface, topics, control period, watchdog timeout", required=True)
    action_chunk_topic: str = parameter("/prophrl/action_chunk", "the chunks to execute", required=True)
    joint_states_topic: str = parameter("/joint_states", "the arm's joint states", required=True)
    estop_topic: str = parameter("/prophrl/estop", "std_msgs/Bool; true latches the e-stop (released only by "
                                                   "the ~/reset_estop service)", required=True)
    diagnostics_period_s: float = parameter(1.0, "period of the /diagnostics status", minimum=0.0,
                                            exclusive_minimum=True)
    state_timeout_s: float = parameter(0.5, "hold when the ee pose / joint state is older than this (0: no check)",
                                       minimum=0.0)
    autostart: bool = parameter(True, "configure and activate at start-up (no lifecycle manager needed)")
    moveit_planning_group: str = parameter("", "MoveIt planning group for ee_delta chunks on joint_trajectory "
                                               "robots (needs moveit_py; empty: IK from the robot config's kinematics)")
    ik_timeout_s: float = parameter(0.02, "time limit of one MoveIt IK request", minimum=0.0, exclusive_minimum=True)
    align_chunks_to_stamp: bool = parameter(True, "start a chunk at the row due now (row i is due i steps after "
                                                  "its header stamp); false where chunk stamps are not on this "
                                                  "node's clock")


# ------------------------------------------------------------------------------ the node
class ExecutorNode(LifecycleNode):
    """Executes ActionChunks on one robot through :class:`SafetyFilter`."""

    def __init__(self, node_name: str = "executor_node", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, ExecutorNodeParameters)
        self.params = ExecutorNodeParameters()
        self._entities: list[Any] = []
        self._active = False
        self.robot: RobotConfig | None = None
        self.filter: SafetyFilter | None = None
        self.watchdog: Watchdog | None = None
        self._ik: MoveItIkBackend | KinematicsIkBackend | None = None
        self._counters = {k: 0 for k in NODE_COUNTERS}
        self._reset_runtime_state()

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    def _reset_runtime_state(self) -> None:
        self._stepper = ChunkStepper()
        self._chunk_clock: tuple[int, Any] | None = None  # (stamp ns, period ns) of an aligned chunk in force
        self._next_due = 0.0
        self._last_step_time: float | None = None
        self._ee_pos: np.ndarray | None = None
        self._ee_time: float | None = None
        self._joints: np.ndarray | None = None
        self._joint_time: float | None = None
        self._state = "idle"

    # ---------------------------------------------------------------- parameters
    def _read_parameters(self) -> None:
        self.params = read_parameters(self, ExecutorNodeParameters)
        self.robot = load_robot_config(self.params.robot)  # ConfigError names the available robots

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._read_parameters()
        except ConfigError as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        robot = self.robot
        was_estopped = self.filter is not None and self.filter.estopped
        self.filter = SafetyFilter(robot)
        if was_estopped:  # a cleanup/configure cycle never releases the e-stop; only ~/reset_estop does
            self.filter.engage_estop()
        self.watchdog = Watchdog(robot.watchdog_timeout_s)
        self._joint_merge = JointPositions(robot.joint_names)
        self._reset_runtime_state()
        try:
            self._create_entities()
        except Exception as exc:  # e.g. an invalid topic name
            self.get_logger().error(f"cannot configure: {exc}")
            self._destroy_entities()
            return TransitionCallbackReturn.FAILURE
        self._ik = None
        if robot.command_interface == "joint_trajectory":
            self._ik, why = select_ik_backend(robot, self.params.moveit_planning_group,
                                              self.params.ik_timeout_s, f"{self.get_name()}_moveit_py")
            (self.get_logger().info if self._ik is not None else self.get_logger().warning)(why)
        self._commander = ArmCommander(robot, self.filter, self._ik)
        self.get_logger().info(
            f"configured for robot {robot.name} ({robot.command_interface}); chunks on "
            f"{self.params.action_chunk_topic}, e-stop on {self.params.estop_topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._state = "estop" if self.filter.estopped else "idle"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_chunk()
        if self._state == "executing":
            self._publish_hold("deactivate")
        self._active = False
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active and self._state == "executing":
            self._publish_hold("shutdown")
        self._active = False
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def _create_entities(self) -> None:
        robot = self.robot
        p = self.params
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._twist_pub = self.create_publisher(TwistStamped, robot.twist_topic, reliable)
        self._gripper_pub = self.create_publisher(Float64, robot.gripper_topic, reliable)
        self._traj_pub = self.create_publisher(JointTrajectory, robot.joint_trajectory_topic, reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._counters_pub = self.create_publisher(String, "~/safety_counters", reliable)
        chunk_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
        volatile = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._entities = [
            self._twist_pub, self._gripper_pub, self._traj_pub, self._diag_pub, self._counters_pub,
            self.create_subscription(ActionChunk, p.action_chunk_topic, self._on_chunk, chunk_qos),
            self.create_subscription(PoseStamped, robot.ee_pose_topic, self._on_ee_pose, qos_profile_sensor_data),
            self.create_subscription(JointState, p.joint_states_topic, self._on_joint_state,
                                     qos_profile_sensor_data),
            # Latched publishers (the e-stop contract) and plain ones (`ros2 topic pub`) both match one of these.
            self.create_subscription(Bool, p.estop_topic, self._on_estop, latched),
            self.create_subscription(Bool, p.estop_topic, self._on_estop, volatile),
            self.create_service(Trigger, "~/reset_estop", self._on_reset_estop),
        ]
        self._step_period = robot.control_period_s
        self._watchdog_period = min(max(robot.watchdog_timeout_s / 10.0, 0.005), robot.control_period_s)
        self._entities += [
            self.create_timer(self._step_period, self._on_step_timer),
            self.create_timer(self._watchdog_period, self._on_watchdog_timer),
            self.create_timer(self.params.diagnostics_period_s, self._publish_diagnostics),
        ]

    def _destroy_entities(self) -> None:
        for entity in self._entities:
            kind = type(entity).__name__
            destroy = {"Publisher": self.destroy_publisher, "Subscription": self.destroy_subscription,
                       "Service": self.destroy_service, "Timer": self.destroy_timer}.get(kind)
            if destroy is not None:
                destroy(entity)
        self._entities = []

    # ---------------------------------------------------------------- state inputs
    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        self._ee_pos = np.array([p.x, p.y, p.z], dtype=np.float64)
        self._ee_time = node_seconds(self)

    def _on_joint_state(self, msg: JointState) -> None:
        if self._joint_merge.update(msg.name, msg.position):  # extra joints (gripper fingers, ...) are ignored
            self._joints = self._joint_merge.values
            self._joint_time = node_seconds(self)

    def _fresh(self, value: np.ndarray | None, stamp: float | None, now: float) -> np.ndarray | None:
        if value is None or stamp is None:
            return None
        if self.params.state_timeout_s > 0 and now - stamp > self.params.state_timeout_s:
            return None
        return value

    # ---------------------------------------------------------------- chunks
    def _reject(self, msg: ActionChunk, reason: str) -> None:
        self._counters["rejected_chunks"] += 1
        self.get_logger().warning(
            f"rejected ActionChunk (action_space={msg.action_space!r}, policy_version={msg.policy_version}): {reason}")

    def _on_chunk(self, msg: ActionChunk) -> None:
        self._counters["received_chunks"] += 1
        if self.filter is None or not self._active:
            self._counters["inactive_dropped_chunks"] += 1
            return
        if self.filter.estopped:
            self._counters["estop_dropped_chunks"] += 1
            self.get_logger().warning("e-stop engaged: dropping ActionChunk (call ~/reset_estop to release)",
                                      throttle_duration_sec=2.0)
            return
        try:
            actions = chunk_to_array(msg).astype(np.float64)
        except InvalidChunkError as exc:
            self._reject(msg, str(exc))
            return
        try:
            actions, space = self._commander.admit(actions, msg.action_space)
        except InvalidChunkError as exc:
            self._reject(msg, str(exc))
            return
        step_s = self.filter.effective_dt(msg.control_period_s)
        command_time = self.get_clock().now()  # the row due, and the stamp of a command sent now
        chunk_clock = self._aligned_clock(msg, step_s)
        first_row = self._row_due(chunk_clock, command_time)
        if first_row >= len(actions):
            self._counters["stale_chunks"] += 1
            self.get_logger().warning(
                f"dropped an ActionChunk whose {len(actions)} rows were all due by now (stamped "
                f"{(self.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9:.3f} s ago); "
                "if its stamp is on another clock, set align_chunks_to_stamp false", throttle_duration_sec=2.0)
            return
        if self._stepper.start(actions, space, step_s, first_row, int(msg.policy_version)):
            self._counters["preempted_chunks"] += 1
        self._chunk_clock = chunk_clock
        self._counters["accepted_chunks"] += 1
        self._state = "executing"
        now = node_seconds(self)
        # Low latency when idle; never faster than one step per step duration.
        if self._last_step_time is None or now - self._last_step_time >= step_s:
            self._execute_step(now, command_time)

    def _aligned_clock(self, msg: ActionChunk, step_s: float) -> tuple[int, Any] | None:
        """(stamp ns, row period ns) when `msg`'s rows are due by its stamp; None without alignment or stamp."""
        stamp_ns = Time.from_msg(msg.header.stamp).nanoseconds
        if not self.params.align_chunks_to_stamp or stamp_ns == 0:
            return None
        return stamp_ns, chunk_period_ns(step_s, self.robot.control_period_s)

    @staticmethod
    def _row_due(clock: tuple[int, Any] | None, now: Time) -> int:
        """The row of a chunk with `clock` due at `now` on this node's clock (0 without one, or a stamp ahead)."""
        if clock is None:
            return 0
        age_ns = now.nanoseconds - clock[0]
        return int(rows_due(age_ns, clock[1])[0]) if age_ns > 0 else 0

    def _drop_chunk(self) -> None:
        self._stepper.drop()
        self._chunk_clock = None

    def _on_step_timer(self) -> None:
        if not self._active or not self._stepper.active:
            return
        now = node_seconds(self)
        if now >= self._next_due:
            command_time = self.get_clock().now()
            self._counters["skipped_rows"] += self._stepper.skip_to(self._row_due(self._chunk_clock, command_time))
            if not self._stepper.active:  # every row's time passed: the watchdog holds the arm
                return
            self._execute_step(now, command_time)

    def _execute_step(self, now: float, command_time: Time) -> None:
        """Command the next row; `command_time` (this node's clock when the row was chosen) stamps it."""
        row, last = self._stepper.take()
        dt = self._stepper.step_s
        # Due one step later; half a timer period early is fine (the timer ticks at the control period).
        self._next_due = now + dt - 0.5 * min(self._step_period, dt)
        self._last_step_time = now
        self._counters["executed_steps"] += 1
        command = self._commander.command(row, self._stepper.space, dt, self._fresh(self._ee_pos, self._ee_time, now),
                                          self._fresh(self._joints, self._joint_time, now))
        for warning in command.warnings:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)
        if command.hold:
            self.get_logger().warning(f"safety hold: {', '.join(command.reasons)}", throttle_duration_sec=1.0)
            if command.interface == "twist":
                self._publish_zero_twist()
            else:
                self._publish_joint_hold()
            self._state = "holding"
        else:
            if command.interface == "twist":
                self._publish_twist(command.linear, command.angular, command_time)
            else:
                self._publish_trajectory(command.positions, dt)
            if command.gripper is not None:
                self._gripper_pub.publish(Float64(data=command.gripper))
            self._state = "executing"
        self.watchdog.step_executed(now)
        if last:
            self._counters["completed_chunks"] += 1

    # ---------------------------------------------------------------- outputs
    def _publish_twist(self, linear: np.ndarray, angular: np.ndarray, stamp: Time | None = None) -> None:
        msg = TwistStamped()
        msg.header.stamp = (stamp or self.get_clock().now()).to_msg()
        msg.header.frame_id = self.robot.base_frame
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
        self._twist_pub.publish(msg)

    def _publish_zero_twist(self) -> None:
        self._counters["hold_commands"] += 1
        self._publish_twist(np.zeros(3), np.zeros(3))

    def _publish_trajectory(self, positions: np.ndarray, duration_s: float) -> None:
        msg = JointTrajectory()  # header.stamp zero: start now (JointTrajectoryController semantics)
        msg.joint_names = list(self.robot.joint_names)
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in positions]
        point.time_from_start = Duration(seconds=duration_s).to_msg()
        msg.points = [point]
        self._traj_pub.publish(msg)

    def _publish_joint_hold(self) -> None:
        joints = self._joints
        self._counters["hold_commands"] += 1
        if joints is None or not np.all(np.isfinite(joints)):
            # JointTrajectoryController rejects empty trajectories, so there is nothing valid to send.
            self.get_logger().error("hold requested but the joint positions are unknown: no JointTrajectory sent",
                                    throttle_duration_sec=1.0)
            return
        self._publish_trajectory(joints, self.robot.control_period_s)

    def _publish_hold(self, why: str) -> None:
        """One hold in every interface this robot was (or may be) commanded through."""
        if self.robot is None or not self._entities:
            return
        if self.robot.command_interface == "twist":
            self._publish_zero_twist()
        if self.robot.command_interface == "joint_trajectory" or self._commander.last_interface == "joint":
            self._publish_joint_hold()
        self._commander.forget_joint_command()
        self.get_logger().info(f"hold ({why})")

    # ---------------------------------------------------------------- watchdog / e-stop
    def _on_watchdog_timer(self) -> None:
        if not self._active or self.filter.estopped:
            return
        if self._stepper.active:
            return
        if self.watchdog.hold_due(node_seconds(self)):
            self._drop_chunk()
            self._counters["watchdog_holds"] += 1
            self._publish_hold("watchdog: chunk exhausted and no new chunk")
            self._state = "holding"

    def _on_estop(self, msg: Bool) -> None:
        if self.filter is None:
            return
        if not msg.data:
            if self.filter.estopped:
                self.get_logger().warning(
                    "e-stop False received: the e-stop stays engaged until ~/reset_estop is called",
                    throttle_duration_sec=2.0)
            return
        if self.filter.estopped:
            return
        self.filter.engage_estop()
        self._counters["estop_engagements"] += 1
        self._drop_chunk()
        self._publish_hold("e-stop")
        self._state = "estop"
        self.get_logger().error("E-STOP engaged: holding; chunks are dropped until ~/reset_estop")

    def _on_reset_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.filter is None:
            response.success, response.message = False, "node is not configured"
            return response
        if not self.filter.estopped:
            response.success, response.message = True, "e-stop was not engaged"
            return response
        self.filter.reset()
        self.watchdog.reset()
        self._counters["estop_resets"] += 1
        self._last_step_time = None
        self._state = "idle" if self._active else "inactive"
        self.get_logger().warning("e-stop released by ~/reset_estop")
        response.success, response.message = True, "e-stop released"
        return response

    def on_callback_error(self, trace: str) -> None:
        """An unexpected exception escaped a callback: drop the chunk, hold, count, log."""
        self._counters["callback_errors"] += 1
        self.get_logger().error(f"unexpected error in a callback (chunk dropped, holding):\n{trace}")
        try:
            self._drop_chunk()
            self._publish_hold("internal error")
            self._state = "holding"
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"could not publish the hold: {exc}")

    # ---------------------------------------------------------------- diagnostics
    def counters(self) -> dict[str, int]:
        """Every counter: the safety filter's (steps, holds, one per reason) and the node's."""
        out = dict(self.filter.counters) if self.filter is not None else {}
        out.update(self._counters)
        return out

    def _publish_diagnostics(self) -> None:
        counters = self.counters()
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: safety"
        status.hardware_id = self.robot.name
        estopped = self.filter.estopped
        if estopped:
            status.level, status.message = DiagnosticStatus.ERROR, "e-stop engaged"
        elif self._state == "holding":
            status.level, status.message = DiagnosticStatus.WARN, "holding"
        else:
            status.level, status.message = DiagnosticStatus.OK, self._state
        now = node_seconds(self)

        def age(stamp: float | None) -> str:
            return "never" if stamp is None else f"{now - stamp:.3f}"

        extra = {"state": self._state, "estop": str(estopped).lower(), "robot": self.robot.name,
                 "command_interface": self.robot.command_interface, "policy_version": str(self._stepper.version),
                 "ee_pose_age_s": age(self._ee_time), "joint_state_age_s": age(self._joint_time)}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in counters.items()] + \
            [KeyValue(key=k, value=v) for k, v in extra.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diag_pub.publish(msg)
        self._counters_pub.publish(String(data=json.dumps({**counters, **extra}, sort_keys=True)))


def _last_hold(node: ExecutorNode) -> None:
    """On the way out (Ctrl-C, SIGTERM) an executing arm gets a last hold."""
    if node._active and node._state == "executing":
        node._publish_hold("shutdown")


def main(args: list[str] | None = None) -> int:
    """Run the executor; returns 0 on a clean stop, 2 when it cannot start (bad parameters).
    A bug in a callback stops the arm and is reported; the node keeps serving the e-stop."""
    return run_node(ExecutorNode, args, spin_timeout_s=0.05, before_destroy=_last_hold,
                    on_callback_error=ExecutorNode.on_callback_error)


if __name__ == "__main__":
    sys.exit(main())
