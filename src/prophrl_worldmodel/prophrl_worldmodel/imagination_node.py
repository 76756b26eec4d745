"""Imagination server: Prophet stands in for robot + camera, for the trainer (batched ``Imagine``) and live.

A thin lifecycle adapter (Nav2 style; with ``autostart`` it configures and activates itself) around
:class:`prophrl_worldmodel.imagination.ImaginedRollouts`. It loads a Prophet checkpoint
(``checkpoint_path``) and serves:

``~/imagine`` (prophrl_msgs/Imagine; the imagination profile remaps it to /prophrl/imagination/imagine)
  Batched closed-loop imagination: ``num_rollouts`` rollouts from one start, each executing
  ``chunks_per_rollout`` chunks (rollout-major, see the .action file), all rollouts of one chunk index
  generated as one batch. One-shot goals (empty ``session_id``) start from ``context_frames`` and
  ``start_ee_pose``; a goal naming a new ``session_id`` opens a session from them, and later goals
  naming it continue every rollout from its own last frame, history and integrated pose (a policy can
  act on what it imagined, one chunk per goal). Sessions are closed after ``session_ttl_s`` idle, by a
  goal naming them with ``num_rollouts: 0`` and no chunks, and whenever the served model changes; at
  most ``max_sessions`` are open (a goal that would open one more fails: close one or wait for the TTL).
  Feedback after every chunk index: ``chunks_done`` / ``chunks_total`` (over all rollouts) and ``stage``.
  Result: frames rollout-major (rgb8 at the model's image size), and the integrated end-effector state
  after each chunk (state_dim 8: x y z qx qy qz qw gripper; 0 when the start pose is unknown).
  A bad goal answers ``success: false`` with the reason (wrong chunk count, a chunk whose horizon is
  not the model's action_horizon, NaN, context frames of mixed size/encoding, unknown session, ...)
  and changes nothing. Goals are served one at a time, in arrival order, in the executor's worker
  threads (the node keeps answering services, chunks and cancels meanwhile); up to
  ``max_queued_goals`` wait behind the running one, a goal beyond that fails at once with "busy".
  A cancelled goal stops after the chunk in progress; a session it was advancing is closed (its
  rollouts would otherwise be part-way through the goal). The queue and the sessions are ROS-free
  (prophrl_worldmodel.imagine_sessions).

``~/adapt_world_model`` (prophrl_msgs/AdaptWorldModel)
  Few-shot adaptation of the served checkpoint on rosbag2 episodes; on success the adapted model replaces
  the served one between goals (prophrl_worldmodel.adapt_action_server).

Live mode (``live: true``): the UNCHANGED policy node runs inside the world model
  The node publishes what a robot + camera would (camera image and info, ee pose, gripper, instruction,
  episode events) from episode ``start_episode`` of ``start_dataset`` and executes the ActionChunks on
  ``action_chunk_topic`` in imagination (prophrl_worldmodel.live_imagination). Setting ``start_episode``
  at run time restarts from that episode (an index out of range is refused).

``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period_s``: status
  ``"<node name>: imagination"`` with the served checkpoint and counters.

Run: ``ros2 run prophrl_worldmodel imagination_node --ros-args --params-file
config/nodes/imagination_node.yaml -p checkpoint_path:=checkpoints/prophet``, or ``prophrl up imagination``.
"""

from __future__ import annotations

import array
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from prophrl_common.chunks import POLICY_STATE_DIM
from prophrl_common.config_io import ConfigError
from prophrl_common.devices import torch_device
from prophrl_common.images import numpy_to_image
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config
from prophrl_msgs.action import Imagine
from prophrl_worldmodel.adapt_action_server import ADAPT_MODES, AdaptActionServer
from prophrl_worldmodel.imagination import ImaginedRollouts
from prophrl_worldmodel.imagine_sessions import (Canceled, DatasetStart, GoalError, GoalQueue, ServedModel, Session,
                                                  SessionTable, goal_chunks, goal_start, load_dataset_start)
from prophrl_worldmodel.live_imagination import LiveImagination
from prophrl_worldmodel.modeling_prophet import Prophet

COUNTERS = ("imagine_goals", "imagine_failed", "imagine_canceled", "imagined_frames", "sessions_opened",
            "sessions_closed", "live_episodes", "live_chunks_executed", "live_frames_published",
            "rejected_chunks", "adaptations", "adaptations_failed")


@dataclasses.dataclass(frozen=True)
class ImaginationNodeParameters:
    checkpoint_path: str = parameter("", "Prophet checkpoint directory (prophet_config.json + model.safetensors or "
                                         "adapter.safetensors) from `prophrl worldmodel pretrain` / `adapt`",
                                     required=True)
    device: str = parameter("cpu", "torch device of the world model (cpu, cuda, cuda:1)", required=True)
    torch_threads: int = parameter(1, "intra-op CPU threads (more help only a large model on idle cores)", minimum=1)
    num_steps: int = parameter(0, "Euler steps per clip (0: the checkpoint's num_inference_steps); a goal's "
                                  "num_steps wins", minimum=0)
    seed: int = parameter(0, "live mode: live episode n (counting restarts) samples with seed + n", minimum=0)
    robot: str = parameter("panda_sim", "robot config (config/robots or a YAML path): ee pose / gripper topics, base "
                                        "frame, control period", required=True)
    autostart: bool = parameter(True, "configure and activate at start-up (no lifecycle manager needed)")
    max_rollouts: int = parameter(64, "largest num_rollouts of one Imagine goal (a group is generated as one batch)",
                                  minimum=1)
    max_sessions: int = parameter(16, "most open Imagine sessions; a goal that would open one more fails",
                                  minimum=1)
    session_ttl_s: float = parameter(600.0, "a session not used for this long is closed", minimum=0.0,
                                     exclusive_minimum=True)
    max_queued_goals: int = parameter(2, "goals that may wait behind the running one (beyond: busy)", minimum=0)
    live: bool = parameter(False, "stand in for robot + camera for the policy node")
    start_dataset: str = parameter("", "live: bags2dataset directory to start from (frame 0, ee pose 0, "
                                       "instruction and camera calibration of episode start_episode)")
    start_episode: int = parameter(0, "live: episode index; setting it at run time restarts from that episode",
                                   minimum=0)
    image_topic: str = parameter("/camera/image_raw", "live: the imagined camera frames", required=True)
    camera_info_topic: str = parameter("/camera/camera_info", "live: the camera calibration", required=True)
    camera_frame: str = parameter("camera_optical_frame", "live: frame_id of the frames", required=True)
    instruction_topic: str = parameter("/prophrl/instruction", "live: the episode's instruction (latched)",
                                       required=True)
    episode_topic: str = parameter("/prophrl/episode", "live: START / STOP events", required=True)
    action_chunk_topic: str = parameter("/prophrl/action_chunk", "live: the chunks to execute (ee_delta_7d / "
                                                                 "ee_delta_14d)", required=True)
    max_chunk_wait_s: float = parameter(0.5, "live: after a frame, wait up to this long for a chunk answering it; "
                                             "then take the newest chunk received", minimum=0.0)
    adapt_output_dir: str = parameter("checkpoints/prophet_adapted", "every AdaptWorldModel goal writes a new "
                                                                     "subdirectory adapt-<timestamp> here",
                                      required=True)
    adapt_mode: str = parameter("lora", "AdaptWorldModel mode when a goal leaves it empty", choices=ADAPT_MODES)
    adapt_batch_size: int = parameter(8, "AdaptWorldModel: training clips per step", minimum=1)
    diagnostics_period_s: float = parameter(1.0, "period of the /diagnostics status with counters", minimum=0.0,
                                            exclusive_minimum=True)


class ImaginationNode(LifecycleNode):
    def __init__(self, node_name: str = "imagination", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, ImaginationNodeParameters)
        self.params = ImaginationNodeParameters()
        self.served = ServedModel()
        self.active = False
        self.live: LiveImagination | None = None
        self._dataset_start: DatasetStart | None = None     # live: where the next episode starts
        self._entities = []
        self._timers = []
        self._counters = {k: 0 for k in COUNTERS}
        self._sessions = SessionTable()
        self._queue = GoalQueue()          # serialised Imagine goals and model swaps
        self.add_on_set_parameters_callback(self._validate_parameter_update)
        self.add_post_set_parameters_callback(self._on_parameters_set)

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    def p(self, name: str):
        return self.get_parameter(name).value

    # ---------------------------------------------------------------- parameters
    def _read_parameters(self) -> None:
        self.params = params = read_parameters(self, ImaginationNodeParameters)
        self.device = torch_device(params.device, "parameter device")
        self.robot = load_robot_config(params.robot)
        self._sessions.max_sessions, self._sessions.ttl_s = params.max_sessions, params.session_ttl_s
        self._queue.max_queued = params.max_queued_goals
        if params.live:
            if not params.start_dataset:
                raise ConfigError("live mode needs parameter start_dataset (a directory from `prophrl bags2dataset`)")
            self._dataset_start = load_dataset_start(params.start_dataset, params.start_episode)

    def _validate_parameter_update(self, parameters: list[Parameter]) -> SetParametersResult:
        for changed in parameters:
            if changed.name == "start_episode" and self._dataset_start is not None:
                try:
                    load_dataset_start(self.params.start_dataset, changed.value)
                except ConfigError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        for changed in parameters:
            if changed.name == "start_episode" and self._dataset_start is not None:
                self._dataset_start = load_dataset_start(self.params.start_dataset, changed.value)
                if self.live is not None:
                    self.live.set_start(self._dataset_start)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._read_parameters()
            torch.set_num_threads(self.params.torch_threads)
            self.served = ServedModel(self._load_model(self.params.checkpoint_path), self.params.checkpoint_path)
        except (ConfigError, RuntimeError, OSError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        params = self.params
        io = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        adapt = AdaptActionServer(self, self.served, output_dir=params.adapt_output_dir, default_mode=params.adapt_mode,
                                  batch_size=params.adapt_batch_size, device=str(self.device),
                                  load_model=self._load_model, swap_model=self._swap_model,
                                  is_active=lambda: self.active, restarts_live=params.live, counters=self._counters)
        self._entities = [
            self._diag_pub,
            ActionServer(self, Imagine, "~/imagine", self._execute_imagine,
                         goal_callback=lambda _goal: GoalResponse.ACCEPT,  # a goal that cannot be served gets a reason
                         cancel_callback=lambda _goal: CancelResponse.ACCEPT, callback_group=ReentrantCallbackGroup()),
            adapt.action_server,
        ]
        if params.live:
            self.live = LiveImagination(self, self.served, params, self.robot, self._dataset_start, self._counters, io)
            self._entities += self.live.entities
        self._io_group = io
        config = self.served.model.config
        self.get_logger().info(
            f"configured: Prophet {config.name} from {self.served.path} ({config.image_size} px, "
            f"{config.frames_per_clip} frames per clip of {config.action_horizon} actions)"
            + (f"; live from {params.start_dataset} episode {params.start_episode}" if params.live else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._timers = [self.create_timer(self.params.diagnostics_period_s, self._publish_diagnostics, self._io_group),
                        self.create_timer(max(1.0, min(self.params.session_ttl_s / 4, 10.0)), self._expire_sessions,
                                          self._io_group)]
        self.active = True
        if self.live is not None:
            self._timers.append(self.create_timer(self.robot.control_period_s, self.live.publish_state,
                                                  self._io_group))
            self.live.start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._stop_live()
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for entity in self._entities:
            entity.destroy()
        self._entities = []
        self.live = None
        self._close_sessions()
        self.served = ServedModel()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._stop_live()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self.active = False
        self._stop_live()
        super().destroy_node()

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()

    # ---------------------------------------------------------------- model
    def _load_model(self, path: str) -> Prophet:
        if not Path(path).is_dir():
            raise ConfigError(f"world model checkpoint {path} is not a directory")
        return Prophet.from_pretrained(path, map_location=str(self.device)).eval()

    def _swap_model(self, model: Prophet, path: str) -> int:
        """Serve `model` from the next goal on: waits for the running Imagine goal, then swaps under the model
        lock, closes every session and restarts live imagination. Returns the number of sessions closed."""
        ticket = self._queue.wait_turn(limit=False)
        try:
            with self.served.lock:
                self.served.swap(model, path)
                closed = self._close_sessions()
        finally:
            self._queue.leave(ticket)
        if self.live is not None:
            self.live.request_restart()
        return closed

    # ---------------------------------------------------------------- Imagine
    def _execute_imagine(self, goal_handle) -> Imagine.Result:
        goal = goal_handle.request
        result = Imagine.Result()
        self._counters["imagine_goals"] += 1
        total = goal.num_rollouts * goal.chunks_per_rollout

        def queued_feedback():
            goal_handle.publish_feedback(Imagine.Feedback(chunks_done=0, chunks_total=total, stage="queued"))

        ticket = None
        try:
            if not self.active or self.served.model is None:
                raise GoalError("the imagination node is not active")
            ticket = self._queue.wait_turn(lambda: goal_handle.is_cancel_requested, queued_feedback)
            self._serve_imagine(goal_handle, goal, result)
            goal_handle.succeed()
            result.success = True
            return result
        except GoalError as exc:
            result.success, result.message = False, str(exc)
            self._counters["imagine_failed"] += 1
        except Canceled as exc:
            result.success = False
            result.message = f"canceled {exc}"
            self._counters["imagine_canceled"] += 1
            result.frames, result.states = [], []
            goal_handle.canceled()
            self.get_logger().info(f"Imagine goal {result.message}")
            return result
        except Exception as exc:  # a model failure: report it, keep serving
            result.success = False
            result.message = f"imagination failed: {type(exc).__name__}: {exc}"
            self._counters["imagine_failed"] += 1
            self.get_logger().error(f"{result.message}\n{traceback.format_exc()}")
        finally:
            if ticket is not None:
                self._queue.leave(ticket)
        result.frames, result.states = [], []
        goal_handle.abort()
        self.get_logger().warning(f"Imagine goal failed: {result.message}")
        return result

    def _serve_imagine(self, goal_handle, goal, result: Imagine.Result) -> None:
        session_id = goal.session_id
        self._expire_sessions()
        if session_id and goal.num_rollouts == 0 and not goal.chunks:   # close a session
            if not self._sessions.close(session_id):
                raise GoalError(f"unknown session {session_id!r}: nothing to close")
            self._counters["sessions_closed"] += 1
            result.message = f"session {session_id!r} closed"
            return
        g, per_rollout = int(goal.num_rollouts), int(goal.chunks_per_rollout)
        if g < 1 or per_rollout < 1:
            raise GoalError(f"num_rollouts and chunks_per_rollout must be >= 1, got {g} and {per_rollout}")
        if g > self.params.max_rollouts:
            raise GoalError(f"num_rollouts {g} exceeds max_rollouts {self.params.max_rollouts}")
        if len(goal.chunks) != g * per_rollout:
            raise GoalError(f"got {len(goal.chunks)} chunks, expected num_rollouts * chunks_per_rollout = "
                            f"{g} * {per_rollout} = {g * per_rollout} (rollout-major)")
        arrays = goal_chunks(goal, self.served.model.config)
        num_steps = int(goal.num_steps) or self.params.num_steps or None
        model, generation = self.served.model, self.served.generation   # swaps wait for this goal (the queue)
        session = self._sessions.check_out(session_id, g, generation, bool(goal.context_frames))
        opened = session is None
        if opened:
            rollouts = ImaginedRollouts(model, goal_start(goal), g, num_steps=num_steps, seed=int(goal.seed))
            session = Session(rollouts, goal.instruction, generation, time.monotonic(), in_use=True)
        rollouts = session.rollouts
        rollouts.num_steps = num_steps if goal.num_steps or opened else rollouts.num_steps
        config = model.config
        frames = np.empty((g, per_rollout, config.frames_per_clip, config.image_size, config.image_size, 3), np.uint8)
        states = np.zeros((g, per_rollout, POLICY_STATE_DIM), np.float32)
        keep = bool(session_id)
        try:
            for c in range(per_rollout):
                if goal_handle.is_cancel_requested:
                    raise Canceled(f"after {c} of {per_rollout} chunks per rollout"
                                    + (f"; session {session_id!r} closed" if session_id else ""))
                chunks = np.stack([arrays[r * per_rollout + c] for r in range(g)])
                with self.served.lock:
                    frames[:, c] = rollouts.step(chunks)
                poses = rollouts.ee_poses
                if poses is not None:
                    states[:, c, :7] = poses
                    states[:, c, 7] = rollouts.grippers
                goal_handle.publish_feedback(Imagine.Feedback(chunks_done=(c + 1) * g, chunks_total=g * per_rollout,
                                                              stage="imagining"))
        except BaseException:
            keep = False
            raise
        finally:
            opened_count, closed_count = self._sessions.check_in(session_id, session, keep, opened)
            self._counters["sessions_opened"] += opened_count
            self._counters["sessions_closed"] += closed_count
        stamp = self.get_clock().now().to_msg()
        frame_id = self.params.camera_frame
        result.frames = [numpy_to_image(frame, "rgb8", stamp=stamp, frame_id=frame_id)
                         for frame in frames.reshape(-1, *frames.shape[-3:])]
        self._counters["imagined_frames"] += len(result.frames)
        result.num_rollouts, result.chunks_per_rollout = g, per_rollout
        result.frames_per_chunk = config.frames_per_clip
        has_state = rollouts.ee_poses is not None
        result.state_dim = POLICY_STATE_DIM if has_state else 0
        result.states = array.array("f", states.reshape(-1).tobytes()) if has_state else []
        what = f"session {session_id!r}" + (" opened" if opened else f", {rollouts.chunks_done} chunks so far") \
            if session_id else "one-shot"
        result.message = f"imagined {g} rollout(s) x {per_rollout} chunk(s) ({what})"

    def _expire_sessions(self) -> None:
        expired = self._sessions.expire()
        if expired:
            self._counters["sessions_closed"] += len(expired)
            self.get_logger().info(f"closed {len(expired)} idle session(s): {expired}")

    def _close_sessions(self) -> int:
        closed = self._sessions.clear()
        self._counters["sessions_closed"] += closed
        return closed

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: imagination", hardware_id=self.served.path,
                                  level=DiagnosticStatus.OK)
        sessions, queued = len(self._sessions), len(self._queue)
        status.message = f"live: {self.live.state}" if self.live is not None else ("busy" if queued else "idle")
        values = {**self._counters, "open_sessions": sessions, "queued_goals": queued,
                  "checkpoint_path": self.served.path,
                  "live_episode_id": self.live.episode_id if self.live is not None else ""}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)



def main(args: list[str] | None = None) -> int:
    """Run the node; 0 on a clean stop, 2 when it cannot start (bad parameters or checkpoint)."""
    def executor(node: ImaginationNode) -> MultiThreadedExecutor:
        queued = max(0, int(node.p("max_queued_goals"))) if isinstance(node.p("max_queued_goals"), int) else 0
        return MultiThreadedExecutor(num_threads=4 + queued)
    return run_node(ImaginationNode, args, executor=executor)


if __name__ == "__main__":
    sys.exit(main())
