"""Live imagination: Prophet stands in for robot + camera, and the unchanged policy node drives it.

:class:`LiveImagination` is the imagination node's live mode (``live: true``). It publishes what a robot +
camera would: the camera image (rgb8, ``image_topic``) and ``camera_info_topic`` (K from the dataset's
calibration resized to the model's image size, all zero when unknown: the ROS "uncalibrated" convention),
the robot config's ``ee_pose_topic`` (geometry_msgs/PoseStamped, base frame) and ``gripper_topic``
(std_msgs/Float64, the gripper command in force, as the executor sends it: the policy node reads its
gripper state there), the latched instruction, and an EpisodeEvent START (STOP for the episode it ends) on
every (re)start. Pose and gripper are also republished every control period so the policy never sees stale
state.

It starts from frame 0, ee_pose 0 and gripper 0 (open: no command before the first frame, the convention
SFT's proprio state uses) of episode ``start_episode`` of the bags2dataset directory ``start_dataset``,
with that episode's camera calibration when index.json has one (action frames on), else none. Loop: take
the newest ActionChunk on ``action_chunk_topic`` (ee_delta_7d or ee_delta_14d) once it answers the last
published frame (its header stamp, which the policy node copies from the camera frame, is at or after that
frame's) or ``max_chunk_wait_s`` after that frame, whichever is first; execute its first action_horizon
steps (a shorter chunk is padded with zero motion and its last gripper command, a longer one truncated:
receding horizon, the rest would have been replaced by a newer chunk on a robot too); generate one clip;
publish its frames one every actions_per_frame * max(chunk.control_period_s, robot control period) seconds
after the chunk was taken (as fast as the model generates when it is slower), each with the ee pose
integrated up to it (same stamp as the image). Each chunk is executed once: with no newer chunk the
imagined arm holds, and the camera keeps streaming its current frame at the clip frame rate (a policy that
subscribes late still gets a frame to act on).

The executed chunk (after padding / truncation) is republished on ``~/executed_chunk``. There is no safety
filter in imagination (the world model has no physical limits to protect). ``~/reset`` (std_srvs/Trigger)
restarts from the start; :meth:`LiveImagination.set_start` (the node's ``start_episode`` parameter) restarts
from another episode. Live episode n (0 first, counting restarts) samples with seed ``seed + n``. A swap of
the served model restarts the episode on the new model.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
import traceback
from typing import TYPE_CHECKING

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from prophrl_common.chunks import ARM_ACTION_DIM, EE_ACTION_SPACES, InvalidChunkError, array_to_chunk, chunk_to_array
from prophrl_common.geometry import EndEffectorPose
from prophrl_common.images import numpy_to_image
from prophrl_common.robots import RobotConfig
from prophrl_msgs.msg import ActionChunk, EpisodeEvent
from prophrl_worldmodel.action_frames import integrate_actions
from prophrl_worldmodel.imagination import ImaginedRollouts
from prophrl_worldmodel.imagine_sessions import DatasetStart, ServedModel, fit_chunk

if TYPE_CHECKING:
    from prophrl_worldmodel.imagination_node import ImaginationNodeParameters

IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


@dataclasses.dataclass
class _ReceivedChunk:
    actions: np.ndarray          # (steps, 7 * arms)
    msg: ActionChunk
    stamp_ns: int
    sequence: int


class LiveImagination:
    """The live mode of one imagination node: its topics, its service and the thread that runs the loop.

    `counters` is the node's diagnostics counters (live_episodes, live_chunks_executed, live_frames_published,
    rejected_chunks are counted here)."""

    def __init__(self, node, served: ServedModel, params: "ImaginationNodeParameters", robot: RobotConfig,
                 start: DatasetStart, counters: dict, callback_group):
        self.node, self.served, self.params, self.robot = node, served, params, robot
        self.counters = counters
        self.state = "idle"
        self.episode_id = ""
        self._dataset_start = start                      # where the next live episode starts
        self._live_start: DatasetStart | None = None     # where the current one started
        self._pose: EndEffectorPose | None = None
        self._calibration = None                         # of the published frames (model size), if known
        self._episodes = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._chunk_lock = threading.Lock()
        self._latest_chunk: _ReceivedChunk | None = None
        self._chunk_sequence = 0
        self._restart_requested = True
        self._image_pub = node.create_publisher(Image, params.image_topic, IMAGE_QOS)
        self._info_pub = node.create_publisher(CameraInfo, params.camera_info_topic, IMAGE_QOS)
        self._ee_pub = node.create_publisher(PoseStamped, robot.ee_pose_topic, STATE_QOS)
        self._gripper_pub = node.create_publisher(Float64, robot.gripper_topic, STATE_QOS)
        self._instruction_pub = node.create_publisher(String, params.instruction_topic, LATCHED)
        self._episode_pub = node.create_publisher(EpisodeEvent, params.episode_topic, STATE_QOS)
        self._executed_pub = node.create_publisher(ActionChunk, "~/executed_chunk", STATE_QOS)
        self.entities = [
            self._image_pub, self._info_pub, self._ee_pub, self._gripper_pub, self._instruction_pub,
            self._episode_pub, self._executed_pub,
            node.create_subscription(ActionChunk, params.action_chunk_topic, self._on_chunk, 10,
                                     callback_group=callback_group),
            node.create_service(Trigger, "~/reset", self._on_reset, callback_group=callback_group),
        ]
        self._running = False

    # ---------------------------------------------------------------- control
    def start(self) -> None:
        self._running = True
        self._stop.clear()
        self.request_restart()
        self._thread = threading.Thread(target=self._loop, name="live_imagination", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30.0)

    def request_restart(self) -> None:
        with self._chunk_lock:
            self._restart_requested = True
        self._wake.set()

    def set_start(self, start: DatasetStart) -> None:
        """Restart from `start` (another episode of the start dataset)."""
        self._dataset_start = start
        self.request_restart()

    def publish_state(self) -> None:
        """The current pose and gripper, stamped now (the node's control-period timer)."""
        if self._running:
            self._publish_state(self.node.get_clock().now().to_msg())

    # ---------------------------------------------------------------- inputs
    def _on_chunk(self, msg: ActionChunk) -> None:
        try:
            actions = chunk_to_array(msg)
            if msg.action_space not in EE_ACTION_SPACES:
                raise InvalidChunkError(f"action_space {msg.action_space!r} cannot be imagined; the world model "
                                        f"executes end-effector deltas {sorted(EE_ACTION_SPACES)}")
            action_dim = self.served.model.config.action_dim
            if actions.shape[1] > action_dim:
                raise InvalidChunkError(f"{actions.shape[1]} action dims; the world model takes at most {action_dim}")
        except InvalidChunkError as exc:
            self.counters["rejected_chunks"] += 1
            self.node.get_logger().warning(f"ActionChunk rejected: {exc}", throttle_duration_sec=2.0)
            return
        with self._chunk_lock:
            self._chunk_sequence += 1
            self._latest_chunk = _ReceivedChunk(actions, msg, stamp_ns(msg.header.stamp), self._chunk_sequence)
        self._wake.set()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self._running:
            response.success, response.message = False, "the imagination node is not active"
            return response
        self.request_restart()
        response.success = True
        response.message = (f"restarting live imagination from {self.params.start_dataset} episode "
                            f"{self._dataset_start.episode}")
        return response

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        rollouts: ImaginedRollouts | None = None
        generation = -1
        executed = 0                 # sequence number of the last chunk taken
        last_frame_ns = 0            # stamp of the newest imagined frame (a chunk answering it is awaited)
        last_frame_time = last_publish = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._chunk_lock:
                    restart, self._restart_requested = self._restart_requested, False
                    latest = self._latest_chunk
                if restart or rollouts is None or generation != self.served.generation:
                    rollouts, generation = self._restart()
                    with self._chunk_lock:   # chunks answering the previous episode are stale
                        executed = self._chunk_sequence
                    last_frame_ns = self._publish_frame(rollouts.current_frames[0])
                    last_frame_time = last_publish = time.monotonic()
                    continue
                now = time.monotonic()
                if latest is None or latest.sequence <= executed or (
                        latest.stamp_ns < last_frame_ns and now - last_frame_time < self.params.max_chunk_wait_s):
                    # Holding: the camera keeps streaming the current frame (a policy that subscribed after
                    # it was published still gets it), at the clip frame rate.
                    self.state = "waiting for a chunk"
                    if now - last_publish >= rollouts.model.config.actions_per_frame * self.robot.control_period_s:
                        self._publish_frame(rollouts.current_frames[0])
                        last_publish = now
                    self._wake.wait(0.02 if latest is not None and latest.sequence > executed else 0.05)
                    self._wake.clear()
                    continue
                executed = latest.sequence
                result = self._step(rollouts, generation, latest)
                if result is not None:
                    last_frame_ns = result
                    last_frame_time = last_publish = time.monotonic()
            except Exception:  # noqa: BLE001 (keep the node up; restart the episode)
                self.node.get_logger().error(
                    f"live imagination error (restarting the episode):\n{traceback.format_exc()}")
                rollouts = None
                self._stop.wait(1.0)

    def _restart(self) -> tuple[ImaginedRollouts, int]:
        start = self._dataset_start
        model, generation = self.served.current()
        rollouts = ImaginedRollouts(model, start.start, 1, num_steps=self.params.num_steps or None,
                                    seed=self.params.seed + self._episodes, keep_frames=False)
        if self.episode_id:
            self._publish_event(EpisodeEvent.STOP, "restart")
        self._live_start = start
        self._episodes += 1
        self.counters["live_episodes"] += 1
        started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.episode_id = f"imagination-{start.episode_id}-{self._episodes}-{started}"
        self._pose = EndEffectorPose.from_quaternion(start.start.ee_pose[:3], start.start.ee_pose[3:],
                                                     start.start.gripper)
        size = model.config.image_size
        self._calibration = start.start.calibration.resized(size, size) if start.start.calibration else None
        self._instruction_pub.publish(String(data=start.start.instruction))
        self._publish_event(EpisodeEvent.START, f"start_dataset episode {start.episode}")
        self.node.get_logger().info(f"live imagination episode {self.episode_id}: {start.start.instruction!r}")
        return rollouts, generation

    def _step(self, rollouts: ImaginedRollouts, generation: int, chunk: _ReceivedChunk) -> int | None:
        """Execute one chunk: generate its clip and publish it paced. Returns the stamp (ns) of its last frame, or
        None when the model changed under it or a restart / stop was requested (the loop restarts)."""
        taken = time.monotonic()
        config = rollouts.model.config
        actions = fit_chunk(chunk.actions, config.action_horizon)
        frame_poses = [poses[0] for poses in integrate_actions([self._pose], actions[:, :ARM_ACTION_DIM],
                                                               config.actions_per_frame)]
        self.state = "imagining"
        with self.served.lock:
            if generation != self.served.generation:
                return None
            clip = rollouts.step(actions[None])[0]
        generated = time.monotonic()
        self.counters["live_chunks_executed"] += 1
        dt = max(float(chunk.msg.control_period_s), self.robot.control_period_s)
        period = config.actions_per_frame * dt
        executed = array_to_chunk(actions, chunk.msg.action_space, dt, policy_version=chunk.msg.policy_version,
                                  instruction=chunk.msg.instruction, stamp=chunk.msg.header.stamp,
                                  frame_id=chunk.msg.header.frame_id)
        self._executed_pub.publish(executed)
        origin = max(taken, generated - period)
        self.state = "executing"
        last_ns = 0
        for f, (frame, frame_pose) in enumerate(zip(clip, frame_poses)):
            delay = origin + (f + 1) * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
            with self._chunk_lock:
                if self._restart_requested:
                    return None
            self._pose = frame_pose
            last_ns = self._publish_frame(frame)
        return last_ns

    # ---------------------------------------------------------------- outputs
    def _publish_frame(self, frame: np.ndarray) -> int:
        """Publish state + camera with one stamp; returns the stamp in ns."""
        stamp = self.node.get_clock().now().to_msg()
        self._publish_state(stamp)
        image = numpy_to_image(np.ascontiguousarray(frame), "rgb8", stamp=stamp, frame_id=self.params.camera_frame)
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
            self.node.get_logger().warning(f"camera frame dropped: {exc}", throttle_duration_sec=5.0)
        self.counters["live_frames_published"] += 1
        return stamp_ns(stamp)

    def _publish_state(self, stamp) -> None:
        pose = self._pose
        if pose is None:
            return
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = stamp, self.robot.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose.position)
        quaternion = Rotation.from_matrix(pose.rotation_matrix).as_quat()
        (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
         msg.pose.orientation.w) = (float(v) for v in quaternion)
        self._ee_pub.publish(msg)
        self._gripper_pub.publish(Float64(data=float(pose.gripper)))

    def _publish_event(self, event: int, message: str) -> None:
        start = self._live_start
        msg = EpisodeEvent(event=event, episode_id=self.episode_id, instruction=start.start.instruction,
                           robot=self.robot.name, task=start.task or "imagination", success=False, message=message)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self._episode_pub.publish(msg)
