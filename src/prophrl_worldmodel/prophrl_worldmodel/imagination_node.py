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
  Few-shot adaptation of the served checkpoint on rosbag2 episodes with
  ``prophrl_worldmodel.training.adapt_from_bags`` (``mode`` lora | full, empty: ``adapt_mode``), into a
  fresh directory under ``adapt_output_dir``; feedback per training step. On success the adapted model
  replaces the served one atomically (between goals: sessions are closed, live imagination restarts
  from its start); on failure the old model keeps serving and the result says why. One at a time.

Live mode (``live: true``): the UNCHANGED policy node runs inside the world model
  The node publishes what a robot + camera would: the camera image (rgb8, ``image_topic``) and
  ``camera_info_topic`` (K from the dataset's calibration resized to the model's image size, all zero
  when unknown: the ROS "uncalibrated" convention), the robot config's ``ee_pose_topic``
  (geometry_msgs/PoseStamped, base frame) and ``gripper_topic`` (std_msgs/Float64, the gripper command
  in force, as the executor sends it: the policy node reads its gripper state there), the latched
  instruction, and an EpisodeEvent START (STOP for the episode it ends) on every (re)start. Pose and
  gripper are also republished every control period so the policy never sees stale state.
  It starts from frame 0, ee_pose 0 and gripper 0 (open: no command before the first frame, the
  convention SFT's proprio state uses) of episode ``start_episode`` of the bags2dataset directory
  ``start_dataset``, with that episode's camera calibration when index.json has one (action frames
  on), else none. Loop: take the newest ActionChunk on ``action_chunk_topic`` (ee_delta_7d or
  ee_delta_14d) once it answers the last published frame (its header stamp, which the policy node
  copies from the camera frame, is at or after that frame's) or ``max_chunk_wait_s`` after that frame,
  whichever is first; execute its first action_horizon steps (a shorter chunk is padded with zero
  motion and its last gripper command, a longer one truncated: receding horizon, the rest would have
  been replaced by a newer chunk on a robot too); generate one clip; publish its frames one every
  actions_per_frame * max(chunk.control_period_s, robot control period) seconds after the chunk was
  taken (as fast as the model generates when it is slower), each with the ee pose integrated up to it
  (same stamp as the image). Each chunk is executed once: with no newer chunk the imagined arm holds,
  and the camera keeps streaming its current frame at the clip frame rate (a policy that subscribes
  late still gets a frame to act on).
  The executed chunk (after padding / truncation) is republished on ``~/executed_chunk``. There is no
  safety filter in imagination (the world model has no physical limits to protect).
  ``~/reset`` (std_srvs/Trigger) restarts from the start; setting ``start_episode`` at run time
  restarts from that episode (an index out of range is refused). Live episode n (0 first, counting
  restarts) samples with seed ``seed + n``.

``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period_s``: status
  ``"<node name>: imagination"`` with the served checkpoint and counters.

Run: ``ros2 run prophrl_worldmodel imagination_node --ros-args --params-file
config/nodes/imagination_node.yaml -p checkpoint_path:=checkpoints/prophet``, or ``prophrl up imagination``.
"""

from __future__ import annotations

import array
import dataclasses
import datetime
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from prophrl_common.chunks import (ARM_ACTION_DIM, EE_ACTION_SPACES, POLICY_STATE_DIM, InvalidChunkError,
                                   array_to_chunk, chunk_to_array)
from prophrl_common.config_io import ConfigError
from prophrl_common.images import ImageConversionError, numpy_to_image, to_rgb8
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config
from prophrl_msgs.action import AdaptWorldModel, Imagine
from prophrl_msgs.msg import ActionChunk, EpisodeEvent
from prophrl_common.geometry import EndEffectorPose
from prophrl_worldmodel.action_frames import integrate_actions
from prophrl_worldmodel.imagine_sessions import (Canceled, DatasetStart, GoalError, GoalQueue, Session, SessionTable,
                                                  fit_chunk, load_dataset_start)
from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts
from prophrl_worldmodel.modeling_prophet import Prophet

IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
ADAPT_MODES = ("lora", "full")
COUNTERS = ("imagine_goals", "imagine_failed", "imagine_canceled", "imagined_frames", "sessions_opened",
            "sessions_closed", "live_episodes", "live_chunks_executed", "live_frames_published",
            "rejected_chunks", "adaptations", "adaptations_failed")


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


@dataclasses.dataclass
class _ReceivedChunk:
    actions: np.ndarray          # (steps, 7 * arms)
    msg: ActionChunk
    stamp_ns: int
    sequence: int




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


# ------------------------------------------------------------------------------ the node
class ImaginationNode(LifecycleNode):
    def __init__(self, node_name: str = "imagination", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, ImaginationNodeParameters)
        self.params = ImaginationNodeParameters()
        self.model: Prophet | None = None
        self.checkpoint_path = ""
        self.active = False
        self._entities = []
        self._timers = []
        self._counters = {k: 0 for k in COUNTERS}
        self._model_lock = threading.Lock()          # one model call at a time; the swap takes it too
        self._model_generation = 0
        self._sessions = SessionTable()
        self._queue = GoalQueue()          # serialised Imagine goals and model swaps
        self._adapting = threading.Lock()
        # live mode
        self._live_thread: threading.Thread | None = None
        self._live_stop = threading.Event()
        self._live_wake = threading.Event()
        self._chunk_lock = threading.Lock()
        self._latest_chunk: _ReceivedChunk | None = None
        self._chunk_sequence = 0
        self._restart_requested = True
        self._dataset_start: DatasetStart | None = None     # where the next live episode starts
        self._live_start: DatasetStart | None = None        # where the current one started
        self._live_episode_id = ""
        self._live_pose: EndEffectorPose | None = None
        self._calibration = None                            # of the published frames (model size), if known
        self._live_state = "idle"
        self._live_episodes = 0
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
        self.checkpoint_param = params.checkpoint_path
        try:
            self.device = torch.device(params.device)
        except RuntimeError as exc:
            raise ConfigError(f"parameter device: {exc}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"parameter device is {self.device} but CUDA is not available here")
        self.torch_threads, self.num_steps, self.seed = params.torch_threads, params.num_steps, params.seed
        self.robot = load_robot_config(params.robot)
        self.max_rollouts, self.session_ttl_s = params.max_rollouts, params.session_ttl_s
        self._sessions.max_sessions, self._sessions.ttl_s = params.max_sessions, params.session_ttl_s
        self._queue.max_queued = params.max_queued_goals
        self.live, self.max_chunk_wait_s = params.live, params.max_chunk_wait_s
        self.adapt_mode, self.adapt_batch_size = params.adapt_mode, params.adapt_batch_size
        self.diagnostics_period_s = params.diagnostics_period_s
        if self.live:
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
                self._request_restart()

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._read_parameters()
            torch.set_num_threads(self.torch_threads)
            self.model = self._load_model(self.checkpoint_param)
            self.checkpoint_path = self.checkpoint_param
        except (ConfigError, RuntimeError, OSError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        io = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities = [
            self._diag_pub,
            ActionServer(self, Imagine, "~/imagine", self._execute_imagine, goal_callback=self._accept_goal,
                         cancel_callback=lambda _goal: CancelResponse.ACCEPT, callback_group=ReentrantCallbackGroup()),
            ActionServer(self, AdaptWorldModel, "~/adapt_world_model", self._execute_adapt,
                         goal_callback=self._accept_goal, cancel_callback=lambda _goal: CancelResponse.ACCEPT,
                         callback_group=ReentrantCallbackGroup()),
        ]
        if self.live:
            self._image_pub = self.create_publisher(Image, self.p("image_topic"), IMAGE_QOS)
            self._info_pub = self.create_publisher(CameraInfo, self.p("camera_info_topic"), IMAGE_QOS)
            self._ee_pub = self.create_publisher(PoseStamped, self.robot.ee_pose_topic, STATE_QOS)
            self._gripper_pub = self.create_publisher(Float64, self.robot.gripper_topic, STATE_QOS)
            self._instruction_pub = self.create_publisher(String, self.p("instruction_topic"), LATCHED)
            self._episode_pub = self.create_publisher(EpisodeEvent, self.p("episode_topic"), STATE_QOS)
            self._executed_pub = self.create_publisher(ActionChunk, "~/executed_chunk", STATE_QOS)
            self._entities += [
                self._image_pub, self._info_pub, self._ee_pub, self._gripper_pub, self._instruction_pub,
                self._episode_pub, self._executed_pub,
                self.create_subscription(ActionChunk, self.p("action_chunk_topic"), self._on_chunk, 10,
                                         callback_group=io),
                self.create_service(Trigger, "~/reset", self._on_reset, callback_group=io),
            ]
        self._io_group = io
        config = self.model.config
        self.get_logger().info(
            f"configured: Prophet {config.name} from {self.checkpoint_path} ({config.image_size} px, "
            f"{config.frames_per_clip} frames per clip of {config.action_horizon} actions)"
            + (f"; live from {self.p('start_dataset')} episode {self.p('start_episode')}" if self.live else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._timers = [self.create_timer(self.diagnostics_period_s, self._publish_diagnostics, self._io_group),
                        self.create_timer(max(1.0, min(self.session_ttl_s / 4, 10.0)), self._expire_sessions,
                                          self._io_group)]
        self.active = True
        if self.live:
            self._timers.append(self.create_timer(self.robot.control_period_s, self._publish_live_state,
                                                  self._io_group))
            self._live_stop.clear()
            self._request_restart()
            self._live_thread = threading.Thread(target=self._live_loop, name="live_imagination", daemon=True)
            self._live_thread.start()
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
        self._close_sessions()
        self.model = None
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
        self._live_stop.set()
        self._live_wake.set()
        thread, self._live_thread = self._live_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30.0)

    # ---------------------------------------------------------------- model
    def _load_model(self, path: str) -> Prophet:
        if not Path(path).is_dir():
            raise ConfigError(f"world model checkpoint {path} is not a directory")
        model = Prophet.from_pretrained(path, map_location=str(self.device)).eval()
        return model

    # ---------------------------------------------------------------- goal serialisation
    def _accept_goal(self, _goal) -> GoalResponse:
        # Every goal is accepted, so that a goal that cannot be served gets a result with the reason.
        return GoalResponse.ACCEPT

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
            if not self.active or self.model is None:
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

    def _parse_chunks(self, goal) -> list[np.ndarray]:
        horizon = self.model.config.action_horizon
        config = self.model.config
        arrays, dims = [], set()
        for i, msg in enumerate(goal.chunks):
            try:
                actions = chunk_to_array(msg)
            except InvalidChunkError as exc:
                raise GoalError(f"chunk {i}: {exc}") from None
            if msg.action_space not in EE_ACTION_SPACES:
                raise GoalError(f"chunk {i}: action_space {msg.action_space!r} cannot be imagined; the world model "
                                f"takes end-effector deltas {sorted(EE_ACTION_SPACES)}")
            if actions.shape[0] != horizon:
                raise GoalError(f"chunk {i} has horizon {actions.shape[0]}, but the world model executes exactly "
                                f"{horizon} actions per clip (frames_per_clip {config.frames_per_clip} x "
                                f"actions_per_frame {config.actions_per_frame}): send chunks of {horizon} steps")
            if actions.shape[1] > config.action_dim:
                raise GoalError(f"chunk {i} has {actions.shape[1]} action dims; this world model takes at most "
                                f"{config.action_dim}")
            dims.add(actions.shape[1])
            arrays.append(actions)
        if len(dims) > 1:
            raise GoalError(f"chunks mix action dims {sorted(dims)}")
        return arrays

    def _context_start(self, goal) -> ImaginationStart:
        if not goal.context_frames:
            raise GoalError("a new session or one-shot goal needs context_frames (oldest first; the last one is "
                            "the start frame)")
        first = goal.context_frames[0]
        frames = []
        for i, image in enumerate(goal.context_frames):
            if (image.width, image.height, image.encoding) != (first.width, first.height, first.encoding):
                raise GoalError(f"context frame {i} is {image.width}x{image.height} {image.encoding}, but frame 0 is "
                                f"{first.width}x{first.height} {first.encoding}: all context frames must share "
                                "one size and encoding")
            try:
                frames.append(to_rgb8(image))
            except ImageConversionError as exc:
                raise GoalError(f"context frame {i}: {exc}") from None
        if first.width == 0 or first.height == 0:
            raise GoalError("context frames are empty (0 pixels)")
        pose = None
        if len(goal.start_ee_pose):
            if len(goal.start_ee_pose) != 7:
                raise GoalError(f"start_ee_pose must be empty or 7 values (x y z qx qy qz qw), got "
                                f"{len(goal.start_ee_pose)}")
            pose = np.asarray(goal.start_ee_pose, np.float64)
        try:
            return ImaginationStart(np.stack(frames), goal.instruction, pose, float(goal.start_gripper))
        except ConfigError as exc:
            raise GoalError(str(exc)) from None

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
        if g > self.max_rollouts:
            raise GoalError(f"num_rollouts {g} exceeds max_rollouts {self.max_rollouts}")
        if len(goal.chunks) != g * per_rollout:
            raise GoalError(f"got {len(goal.chunks)} chunks, expected num_rollouts * chunks_per_rollout = "
                            f"{g} * {per_rollout} = {g * per_rollout} (rollout-major)")
        arrays = self._parse_chunks(goal)
        num_steps = int(goal.num_steps) or self.num_steps or None
        session = self._sessions.check_out(session_id, g, self._model_generation, bool(goal.context_frames))
        opened = session is None
        if opened:
            start = self._context_start(goal)
            rollouts = ImaginedRollouts(self.model, start, g, num_steps=num_steps, seed=int(goal.seed))
            session = Session(rollouts, goal.instruction, self._model_generation, time.monotonic(), in_use=True)
        rollouts = session.rollouts
        rollouts.num_steps = num_steps if goal.num_steps or opened else rollouts.num_steps
        config = self.model.config
        frames = np.empty((g, per_rollout, config.frames_per_clip, config.image_size, config.image_size, 3), np.uint8)
        states = np.zeros((g, per_rollout, POLICY_STATE_DIM), np.float32)
        keep = bool(session_id)
        try:
            for c in range(per_rollout):
                if goal_handle.is_cancel_requested:
                    raise Canceled(f"after {c} of {per_rollout} chunks per rollout"
                                    + (f"; session {session_id!r} closed" if session_id else ""))
                chunks = np.stack([arrays[r * per_rollout + c] for r in range(g)])
                with self._model_lock:
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
        frame_id = self.p("camera_frame")
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

    # ---------------------------------------------------------------- AdaptWorldModel
    def _execute_adapt(self, goal_handle) -> AdaptWorldModel.Result:
        goal = goal_handle.request
        result = AdaptWorldModel.Result()
        if not self._adapting.acquire(blocking=False):
            result.success, result.message = False, "an adaptation is already running; one at a time"
            goal_handle.abort()
            return result
        try:
            return self._adapt(goal_handle, goal, result)
        finally:
            self._adapting.release()

    def _adapt(self, goal_handle, goal, result: AdaptWorldModel.Result) -> AdaptWorldModel.Result:
        old = self.checkpoint_path
        mode = goal.mode or self.adapt_mode
        try:
            if not self.active or self.model is None:
                raise GoalError("the imagination node is not active")
            if not goal.bag_paths:
                raise GoalError("bag_paths is empty: give rosbag2 episode bags (or directories of bags)")
            if goal.steps < 1:
                raise GoalError(f"steps must be >= 1, got {goal.steps}")
            if mode not in ADAPT_MODES:
                raise GoalError(f"mode must be one of {ADAPT_MODES} (or empty: {self.adapt_mode}), got {goal.mode!r}")
            try:
                from prophrl_worldmodel.training import adapt_from_bags
            except ImportError as exc:
                raise GoalError(f"adaptation is not available: {exc}") from None
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            out_dir = Path(self.p("adapt_output_dir")) / f"adapt-{stamp}"

            def progress(step: int, total_steps: int, loss: float) -> None:
                if goal_handle.is_cancel_requested:
                    raise Canceled(f"at step {step} of {total_steps}")
                goal_handle.publish_feedback(AdaptWorldModel.Feedback(step=int(step), total_steps=int(total_steps),
                                                                      loss=float(loss)))

            self.get_logger().info(f"adapting {old} on {len(goal.bag_paths)} bag path(s), {goal.steps} {mode} steps "
                                   f"-> {out_dir}")
            adapted = adapt_from_bags(old, list(goal.bag_paths), int(goal.steps), mode, out_dir, progress=progress,
                                      batch_size=self.adapt_batch_size, device=str(self.device), show_progress=False)
            new_path = str(adapted.checkpoint_path)
            try:
                new_model = self._load_model(new_path)
            except (ConfigError, RuntimeError, OSError) as exc:
                raise GoalError(f"the adapted checkpoint {new_path} does not load: {exc}") from None
            metrics = {str(k): float(v) for k, v in dict(adapted.metrics).items()}
            closed = self._swap_model(new_model, new_path)
        except Canceled as exc:
            result.success, result.message = False, f"canceled {exc}; still serving {old}"
            self._counters["adaptations_failed"] += 1
            goal_handle.canceled()
            return result
        except Exception as exc:  # noqa: BLE001 (training errors of any kind: keep serving the old model)
            reason = str(exc) if isinstance(exc, GoalError) else f"adaptation failed: {type(exc).__name__}: {exc}"
            result.success, result.message = False, f"{reason}; still serving {old}"
            self._counters["adaptations_failed"] += 1
            self.get_logger().error(result.message)
            goal_handle.abort()
            return result
        self._counters["adaptations"] += 1
        result.success = True
        result.checkpoint_path = new_path
        result.metric_names = list(metrics)
        result.metric_values = [metrics[k] for k in metrics]
        result.message = (f"serving the adapted world model {new_path} (was {old}); closed {closed} open imagination "
                          f"session(s), which ran on the previous model"
                          + ("; live imagination restarted from its start" if self.live else ""))
        self.get_logger().info(result.message)
        goal_handle.succeed()
        return result

    def _swap_model(self, model: Prophet, path: str) -> int:
        """Serve `model` from the next goal on: waits for the running Imagine goal, then swaps under the model
        lock, closes every session and restarts live imagination. Returns the number of sessions closed."""
        ticket = self._queue.wait_turn(limit=False)
        try:
            with self._model_lock:
                self.model, self.checkpoint_path = model, path
                self._model_generation += 1
                closed = self._close_sessions()
        finally:
            self._queue.leave(ticket)
        if self.live:
            self._request_restart()
        return closed

    # ---------------------------------------------------------------- live mode: inputs
    def _on_chunk(self, msg: ActionChunk) -> None:
        try:
            actions = chunk_to_array(msg)
            if msg.action_space not in EE_ACTION_SPACES:
                raise InvalidChunkError(f"action_space {msg.action_space!r} cannot be imagined; the world model "
                                        f"executes end-effector deltas {sorted(EE_ACTION_SPACES)}")
            if actions.shape[1] > self.model.config.action_dim:
                raise InvalidChunkError(f"{actions.shape[1]} action dims; the world model takes at most "
                                        f"{self.model.config.action_dim}")
        except InvalidChunkError as exc:
            self._counters["rejected_chunks"] += 1
            self.get_logger().warning(f"ActionChunk rejected: {exc}", throttle_duration_sec=2.0)
            return
        with self._chunk_lock:
            self._chunk_sequence += 1
            self._latest_chunk = _ReceivedChunk(actions, msg, _stamp_ns(msg.header.stamp), self._chunk_sequence)
        self._live_wake.set()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self.active:
            response.success, response.message = False, "the imagination node is not active"
            return response
        self._request_restart()
        response.success = True
        response.message = (f"restarting live imagination from {self.p('start_dataset')} episode "
                            f"{self._dataset_start.episode}")
        return response

    def _request_restart(self) -> None:
        with self._chunk_lock:
            self._restart_requested = True
        self._live_wake.set()

    # ---------------------------------------------------------------- live mode: the loop
    def _live_loop(self) -> None:
        rollouts: ImaginedRollouts | None = None
        generation = -1
        executed = 0                 # sequence number of the last chunk taken
        last_frame_ns = 0            # stamp of the newest imagined frame (a chunk answering it is awaited)
        last_frame_time = last_publish = time.monotonic()
        while not self._live_stop.is_set():
            try:
                with self._chunk_lock:
                    restart, self._restart_requested = self._restart_requested, False
                    latest = self._latest_chunk
                if restart or rollouts is None or generation != self._model_generation:
                    rollouts, generation = self._live_restart()
                    with self._chunk_lock:   # chunks answering the previous episode are stale
                        executed = self._chunk_sequence
                    last_frame_ns = self._publish_live_frame(rollouts.current_frames[0])
                    last_frame_time = last_publish = time.monotonic()
                    continue
                now = time.monotonic()
                if latest is None or latest.sequence <= executed or (
                        latest.stamp_ns < last_frame_ns and now - last_frame_time < self.max_chunk_wait_s):
                    # Holding: the camera keeps streaming the current frame (a policy that subscribed after
                    # it was published still gets it), at the clip frame rate.
                    self._live_state = "waiting for a chunk"
                    if now - last_publish >= rollouts.model.config.actions_per_frame * self.robot.control_period_s:
                        self._publish_live_frame(rollouts.current_frames[0])
                        last_publish = now
                    self._live_wake.wait(0.02 if latest is not None and latest.sequence > executed else 0.05)
                    self._live_wake.clear()
                    continue
                executed = latest.sequence
                result = self._live_step(rollouts, generation, latest)
                if result is not None:
                    last_frame_ns = result
                    last_frame_time = last_publish = time.monotonic()
            except Exception:  # noqa: BLE001 (keep the node up; restart the episode)
                self.get_logger().error(f"live imagination error (restarting the episode):\n{traceback.format_exc()}")
                rollouts = None
                self._live_stop.wait(1.0)

    def _live_restart(self) -> tuple[ImaginedRollouts, int]:
        start = self._dataset_start
        with self._model_lock:
            model, generation = self.model, self._model_generation
        rollouts = ImaginedRollouts(model, start.start, 1, num_steps=self.num_steps or None,
                                    seed=self.seed + self._live_episodes, keep_frames=False)
        if self._live_episode_id:
            self._publish_event(EpisodeEvent.STOP, "restart")
        self._live_start = start
        self._live_episodes += 1
        self._counters["live_episodes"] += 1
        started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self._live_episode_id = f"imagination-{start.episode_id}-{self._live_episodes}-{started}"
        self._live_pose = EndEffectorPose.from_quaternion(start.start.ee_pose[:3], start.start.ee_pose[3:],
                                                          start.start.gripper)
        size = model.config.image_size
        self._calibration = start.start.calibration.resized(size, size) if start.start.calibration else None
        self._instruction_pub.publish(String(data=start.start.instruction))
        self._publish_event(EpisodeEvent.START, f"start_dataset episode {start.episode}")
        self.get_logger().info(f"live imagination episode {self._live_episode_id}: {start.start.instruction!r}")
        return rollouts, generation

    def _live_step(self, rollouts: ImaginedRollouts, generation: int, chunk: _ReceivedChunk):
        """Execute one chunk: generate its clip and publish it paced. Returns the stamp (ns) of its last frame, or
        None when the model changed under it or a restart / stop was requested (the loop restarts)."""
        taken = time.monotonic()
        config = rollouts.model.config
        actions = fit_chunk(chunk.actions, config.action_horizon)
        pose = self._live_pose
        frame_poses = [poses[0] for poses in integrate_actions([pose], actions[:, :ARM_ACTION_DIM],
                                                               config.actions_per_frame)]
        self._live_state = "imagining"
        with self._model_lock:
            if generation != self._model_generation:
                return None
            clip = rollouts.step(actions[None])[0]
        generated = time.monotonic()
        self._counters["live_chunks_executed"] += 1
        dt = max(float(chunk.msg.control_period_s), self.robot.control_period_s)
        period = config.actions_per_frame * dt
        executed = array_to_chunk(actions, chunk.msg.action_space, dt, policy_version=chunk.msg.policy_version,
                                  instruction=chunk.msg.instruction, stamp=chunk.msg.header.stamp,
                                  frame_id=chunk.msg.header.frame_id)
        self._executed_pub.publish(executed)
        origin = max(taken, generated - period)
        self._live_state = "executing"
        stamp_ns = 0
        for f, (frame, frame_pose) in enumerate(zip(clip, frame_poses)):
            delay = origin + (f + 1) * period - time.monotonic()
            if delay > 0 and self._live_stop.wait(delay):
                return None
            with self._chunk_lock:
                if self._restart_requested:
                    return None
            self._live_pose = frame_pose
            stamp_ns = self._publish_live_frame(frame)
        return stamp_ns

    # ---------------------------------------------------------------- live mode: outputs
    def _publish_live_frame(self, frame: np.ndarray) -> int:
        """Publish state + camera with one stamp; returns the stamp in ns."""
        stamp = self.get_clock().now().to_msg()
        self._publish_state(stamp)
        image = numpy_to_image(np.ascontiguousarray(frame), "rgb8", stamp=stamp, frame_id=self.p("camera_frame"))
        info = CameraInfo(width=image.width, height=image.height)
        info.header = image.header
        calibration = self._calibration
        if calibration is not None:
            info.distortion_model = "plumb_bob"
            info.d = [0.0] * 5
            info.k = [calibration.fx, 0.0, calibration.cx, 0.0, calibration.fy, calibration.cy, 0.0, 0.0, 1.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = [calibration.fx, 0.0, calibration.cx, 0.0, 0.0, calibration.fy, calibration.cy, 0.0,
                      0.0, 0.0, 1.0, 0.0]
        try:
            self._image_pub.publish(image)
            self._info_pub.publish(info)
        except RCLError as exc:   # back-pressure from a slow reliable subscriber: drop this frame
            self.get_logger().warning(f"camera frame dropped: {exc}", throttle_duration_sec=5.0)
        self._counters["live_frames_published"] += 1
        return _stamp_ns(stamp)

    def _publish_state(self, stamp) -> None:
        pose = self._live_pose
        if pose is None:
            return
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = stamp, self.robot.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose.position)
        quaternion = _quaternion(pose.rotation_matrix)
        (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
         msg.pose.orientation.w) = (float(v) for v in quaternion)
        self._ee_pub.publish(msg)
        self._gripper_pub.publish(Float64(data=float(pose.gripper)))

    def _publish_live_state(self) -> None:
        if self.active:
            self._publish_state(self.get_clock().now().to_msg())

    def _publish_event(self, event: int, message: str) -> None:
        start = self._live_start
        msg = EpisodeEvent(event=event, episode_id=self._live_episode_id, instruction=start.start.instruction,
                           robot=self.robot.name, task=start.task or "imagination", success=False, message=message)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._episode_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: imagination", hardware_id=self.checkpoint_path,
                                  level=DiagnosticStatus.OK)
        sessions, queued = len(self._sessions), len(self._queue)
        status.message = f"live: {self._live_state}" if self.live else ("busy" if queued else "idle")
        values = {**self._counters, "open_sessions": sessions, "queued_goals": queued,
                  "checkpoint_path": self.checkpoint_path, "live_episode_id": self._live_episode_id}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _quaternion(rotation: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(rotation).as_quat()


def main(args: list[str] | None = None) -> int:
    """Run the node; 0 on a clean stop, 2 when it cannot start (bad parameters or checkpoint)."""
    def executor(node: ImaginationNode) -> MultiThreadedExecutor:
        queued = max(0, int(node.p("max_queued_goals"))) if isinstance(node.p("max_queued_goals"), int) else 0
        return MultiThreadedExecutor(num_threads=4 + queued)
    return run_node(ImaginationNode, args, executor=executor)


if __name__ == "__main__":
    sys.exit(main())
