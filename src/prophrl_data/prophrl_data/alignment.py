"""One rosbag2 episode -> its samples aligned to the camera frames.

One sample per camera frame; all times are the recorder's receive times, MCAP log_time, so every stream is on
one clock even when the sources stamp headers with different clocks:

- ``frame``: the image as (H, W, 3) uint8 RGB;
- ``joint_positions``: the latest JointState at or before the frame, in the robot config's joint
  order (by name; extra joints ignored, missing ones are an error);
- ``ee_pose``: the latest end-effector PoseStamped (x y z qx qy qz qw);
- ``action_chunk``: the latest ActionChunk at or before the frame as (horizon, action_dim), and
  ``chunk_step``: the step of that chunk due at the frame, floor(elapsed / control period) in exact
  integer arithmetic on ns (prophrl_common.chunks.rows_due), clipped to the last step when the chunk
  has run out (the executor holds until the next chunk);
- the episode's ``instruction`` (bag custom_data, else the recorded instruction topic) and ``success``
  (see :func:`episode_success`: True / False, or None when a recovered bag no longer says);
- the episode's ``camera`` calibration, from the first ``/camera/camera_info`` (K, width, height)
  and the latest ``/camera/pose`` at the first kept frame (else the first one; geometry_msgs/PoseStamped:
  the OpenCV/ROS optical frame's pose in the robot base frame, latched by the sim; its inverse is
  ``world_to_camera``). Both topics are
  optional: a bag without either, with an uncalibrated CameraInfo (K all zero, the ROS convention)
  or with a camera pose in another frame than the robot's base frame has ``camera: null``.

Frames before the first chunk, joint state and pose have no action or state and are dropped
(counted as ``skipped_frames``). A bag that cannot be aligned is a :class:`BagError` naming it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prophrl_common.chunks import InvalidChunkError, chunk_period_ns, chunk_steps_due, chunk_to_array
from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration, EndEffectorPose
from prophrl_common.images import ImageConversionError, to_rgb8
from prophrl_common.robots import RobotConfig
from prophrl_common.bag_error import BagError
from prophrl_data.bag_reader import Bag, open_bag
from prophrl_data.samples import DatasetTopics, EpisodeSamples


class _ChunkStream:
    """ActionChunks of one bag, checked for one shape and action space."""

    def __init__(self, bag: Bag):
        self.bag = bag
        self.times: list[int] = []
        self.arrays: list[np.ndarray] = []
        self.action_space = ""
        self.control_period_s = 0.0

    def add(self, time_ns: int, msg) -> None:
        number = len(self.arrays)
        try:
            actions = chunk_to_array(msg)
        except InvalidChunkError as exc:
            raise BagError(self.bag.path, f"action chunk #{number} (t={time_ns} ns) is invalid: {exc}") from None
        if self.arrays:
            first = self.arrays[0]
            if actions.shape != first.shape or msg.action_space != self.action_space:
                raise BagError(self.bag.path, f"action chunk #{number} is {msg.action_space} with (horizon,"
                                              f" action_dim) = {actions.shape}, but earlier chunks are"
                                              f" {self.action_space} with {first.shape}")
        else:
            self.action_space, self.control_period_s = msg.action_space, float(msg.control_period_s)
        self.times.append(time_ns)
        self.arrays.append(actions)


def _joint_reorder(bag: Bag, robot: RobotConfig, names: Sequence[str], cache: dict) -> np.ndarray:
    key = tuple(names)
    if key not in cache:
        index = {name: i for i, name in enumerate(names)}
        missing = [name for name in robot.joint_names if name not in index]
        if missing:
            raise BagError(bag.path, f"joint_states lack joints {missing} of robot {robot.name}"
                                     f" (they name {list(names)})")
        cache[key] = np.array([index[name] for name in robot.joint_names])
    return cache[key]


def _sorted_by_time(times: list[int], values: list) -> tuple[np.ndarray, list]:
    order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
    return np.asarray(times, dtype=np.int64)[order], [values[i] for i in order]


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def episode_success(bag: Bag, end_events: list[tuple[str, bool]]) -> bool | None:
    """The episode's outcome from its bag and its (kind, success flag) end events: True, False, or None
    when it is unknown.

    A complete bag says it in its custom_data ``success`` (written at close), else by a SUCCESS
    event. A recovered bag (its writer died, or its file was cut) is judged only by the
    EpisodeEvents that survived in its data: a metadata.yaml or metadata record can outlive a cut
    that took the episode's end with it. SUCCESS (or a STOP marked successful) -> True, FAILURE or
    STOP -> False, no end event -> None, with a warning: such an episode is no demonstration and no
    judge label (SFT and judge training leave it out).
    """
    if not bag.recovered:
        if "success" in bag.custom_data:
            return _truthy(bag.custom_data["success"])
        return any(kind == "SUCCESS" for kind, _ in end_events)
    if any(kind == "SUCCESS" or (kind == "STOP" and success) for kind, success in end_events):
        return True
    if end_events:
        return False
    warnings.warn(f"bag {bag.path}: recovered ({'; '.join(bag.recovery_notes)}) and no SUCCESS, FAILURE or STOP"
                  " event survived: its outcome is unknown (success: null); SFT and judge training leave it out",
                  stacklevel=2)
    return None


def _camera_pose_at(poses: list, time_ns: int):
    """The latest camera pose received at or before time_ns (a latched pose re-sent when a recorder opens the
    bag may precede a fresh one), else the first one; None without any."""
    if not poses:
        return None
    before = [msg for t, msg in sorted(poses, key=lambda item: item[0]) if t <= time_ns]
    return before[-1] if before else min(poses, key=lambda item: item[0])[1]


def camera_entry(bag: Bag, robot: RobotConfig, camera_info, camera_pose) -> dict | None:
    """The index.json "camera" entry from a CameraInfo and the camera's PoseStamped (either may be None).

    None when either is missing, when the CameraInfo is uncalibrated (K all zero) or when the pose is in
    another frame than the robot's base frame (no tf here to move it); a calibration that is present but
    not a pinhole camera / rigid pose is a BagError.
    """
    if camera_info is None or camera_pose is None:
        return None
    k = np.asarray(camera_info.k, np.float64).reshape(-1)
    if k.size == 9 and not k.any():
        return None
    frame = camera_pose.header.frame_id
    if frame and frame.lstrip("/") != robot.base_frame.lstrip("/"):
        warnings.warn(f"bag {bag.path}: camera pose is in frame {frame!r}, not the robot base frame "
                      f"{robot.base_frame!r}; the episode is stored without calibration", stacklevel=2)
        return None
    p, q = camera_pose.pose.position, camera_pose.pose.orientation
    quaternion = np.array([q.x, q.y, q.z, q.w], np.float64)
    if not np.isfinite(quaternion).all() or np.linalg.norm(quaternion) < 1e-9:
        raise BagError(bag.path, f"camera pose has an invalid orientation quaternion {quaternion.tolist()}")
    rotation = EndEffectorPose.from_quaternion((p.x, p.y, p.z), quaternion, 0.0).rotation_matrix
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = rotation.T   # the pose is camera -> base; invert it
    world_to_camera[:3, 3] = -rotation.T @ np.array([p.x, p.y, p.z], np.float64)
    try:
        calibration = CameraCalibration.from_camera_info(k, world_to_camera, int(camera_info.width),
                                                         int(camera_info.height))
    except ConfigError as exc:
        raise BagError(bag.path, f"camera calibration is invalid: {exc}") from None
    return {"k": [float(v) for v in k], "width": calibration.width, "height": calibration.height,
            "world_to_camera": list(calibration.world_to_camera)}


def load_episode(bag_path: str | Path, robot: RobotConfig, topics: DatasetTopics | None = None) -> EpisodeSamples:
    """Read one bag and align its streams to its camera frames (see the module docstring)."""
    topics = topics or DatasetTopics.for_robot(robot)
    bag = open_bag(bag_path)
    bag.require_topics(topics.required())
    frame_times, frames = [], []
    joint_times, joints = [], []
    pose_times, poses = [], []
    chunks = _ChunkStream(bag)
    instructions, end_events = [], []
    camera_info, camera_poses = None, []
    reorder_cache: dict = {}
    optional = {topics.instruction: "std_msgs/msg/String", topics.episode: "prophrl_msgs/msg/EpisodeEvent",
                topics.camera_info: "sensor_msgs/msg/CameraInfo", topics.camera_pose: "geometry_msgs/msg/PoseStamped"}
    wanted = [*topics.required(), *(topic for topic, msgtype in optional.items()
                                    if topic in bag.topics and bag.topics[topic].msgtype == msgtype)]
    for message in bag.messages(wanted):
        if message.topic == topics.camera_info and camera_info is not None:
            continue  # only the first CameraInfo is used: skip decoding one per frame
        msg = bag.deserialize(message)
        t = message.log_time_ns
        if message.topic == topics.image:
            try:
                frame = to_rgb8(msg)
            except ImageConversionError as exc:
                raise BagError(bag.path, f"image at t={t} ns: {exc}") from None
            if frames and frame.shape != frames[0].shape:
                raise BagError(bag.path, f"image at t={t} ns is {frame.shape}, earlier ones {frames[0].shape}")
            frame_times.append(t)
            frames.append(frame)
        elif message.topic == topics.joint_states:
            positions = np.asarray(msg.position, dtype=np.float32)
            if len(positions) != len(msg.name):
                raise BagError(bag.path, f"joint_states at t={t} ns have {len(msg.name)} names but"
                                         f" {len(positions)} positions")
            joint_times.append(t)
            joints.append(positions[_joint_reorder(bag, robot, msg.name, reorder_cache)])
        elif message.topic == topics.ee_pose:
            p, q = msg.pose.position, msg.pose.orientation
            pose_times.append(t)
            poses.append(np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float32))
        elif message.topic == topics.action_chunk:
            chunks.add(t, msg)
        elif message.topic == topics.instruction:
            instructions.append(msg.data)
        elif message.topic == topics.camera_info:
            camera_info = msg if camera_info is None else camera_info
        elif message.topic == topics.camera_pose:
            camera_poses.append((t, msg))
        elif msg.event in (msg.SUCCESS, msg.FAILURE, msg.STOP):
            end_events.append(("SUCCESS" if msg.event == msg.SUCCESS else "FAILURE" if msg.event == msg.FAILURE
                               else "STOP", bool(msg.success)))

    frame_times, frames = _sorted_by_time(frame_times, frames)
    joint_times, joints = _sorted_by_time(joint_times, joints)
    pose_times, poses = _sorted_by_time(pose_times, poses)
    chunk_times, chunk_arrays = _sorted_by_time(chunks.times, chunks.arrays)
    latest = {
        "joint": np.searchsorted(joint_times, frame_times, side="right") - 1,
        "pose": np.searchsorted(pose_times, frame_times, side="right") - 1,
        "chunk": np.searchsorted(chunk_times, frame_times, side="right") - 1,
    }
    keep = np.flatnonzero((latest["joint"] >= 0) & (latest["pose"] >= 0) & (latest["chunk"] >= 0))
    if keep.size == 0:
        raise BagError(bag.path, f"none of its {len(frames)} camera frames comes after the first action chunk,"
                                 " joint state and end-effector pose: nothing to align")
    chunk_index = latest["chunk"][keep]
    horizon = chunk_arrays[0].shape[0]
    period_ns = chunk_period_ns(chunks.control_period_s, robot.control_period_s)
    steps = chunk_steps_due(frame_times[keep] - chunk_times[chunk_index], period_ns, horizon)

    custom = bag.custom_data
    instruction = custom.get("instruction") or (instructions[-1] if instructions else "")
    return EpisodeSamples(
        bag_path=bag.path,
        episode_id=custom.get("episode_id") or bag.path.name,
        instruction=instruction,
        task=custom.get("task", ""),
        success=episode_success(bag, end_events),
        recovered=bag.recovered,
        frames=np.stack([frames[i] for i in keep]),
        frame_times_ns=frame_times[keep],
        joint_positions=np.stack([joints[i] for i in latest["joint"][keep]]),
        ee_pose=np.stack([poses[i] for i in latest["pose"][keep]]),
        action_chunks=np.stack([chunk_arrays[i] for i in chunk_index]),
        chunk_steps=steps,
        action_space=chunks.action_space,
        control_period_s=float(period_ns / 1_000_000_000),
        skipped_frames=int(keep[0]),
        camera=camera_entry(bag, robot, camera_info, _camera_pose_at(camera_poses, int(frame_times[keep[0]]))),
    )


def on_rate_grid(episode: EpisodeSamples, fps: int) -> tuple[EpisodeSamples, int]:
    """The episode's samples at a fixed rate, for a dataset whose frames are frame_index / fps apart
    (LeRobot): one sample per point of the grid first frame + k / fps up to the last frame, each the
    sample of the camera frame nearest to it (the earlier one on a tie). Returns it and how many frames
    were repeated or skipped to fill the grid.

    A rate-exact recording comes back unchanged; a real camera's jittery timestamps map one frame to
    each grid point; a camera slower or faster than fps repeats or skips frames.
    """
    times = episode.frame_times_ns
    if len(times) < 2:
        return episode, 0
    count = 1 + round((int(times[-1]) - int(times[0])) * fps / 1_000_000_000)
    grid = int(times[0]) + np.array([round(k * 1_000_000_000 / fps) for k in range(count)], np.int64)
    after = np.clip(np.searchsorted(times, grid, side="left"), 1, len(times) - 1)
    before = after - 1
    chosen = np.where(times[after] - grid < grid - times[before], after, before)
    changed = count - len(np.unique(chosen)) + (len(times) - len(np.unique(chosen)))
    if np.array_equal(chosen, np.arange(len(times))):
        return episode, 0
    return dataclasses.replace(
        episode, frames=episode.frames[chosen], frame_times_ns=grid, joint_positions=episode.joint_positions[chosen],
        ee_pose=episode.ee_pose[chosen], action_chunks=episode.action_chunks[chosen],
        chunk_steps=episode.chunk_steps[chosen]), int(changed)
