"""What one recorded episode becomes before it is written anywhere, without ROS or bag readers: the topics a
dataset is made from (:class:`DatasetTopics`) and one episode's samples aligned to its camera frames
(:class:`EpisodeSamples`, which prophrl_data.alignment makes from a rosbag2 episode and
prophrl_data.lerobot_import from a LeRobot dataset, and prophrl_data.shards writes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from prophrl_common.robots import RobotConfig


@dataclasses.dataclass(frozen=True)
class DatasetTopics:
    image: str = "/camera/image_raw"
    joint_states: str = "/joint_states"
    ee_pose: str = "/prophrl/ee_pose"
    action_chunk: str = "/prophrl/action_chunk"
    instruction: str = "/prophrl/instruction"
    episode: str = "/prophrl/episode"
    camera_info: str = "/camera/camera_info"
    camera_pose: str = "/camera/pose"

    @classmethod
    def for_robot(cls, robot: RobotConfig, image: str = "/camera/image_raw") -> DatasetTopics:
        return cls(image=image, ee_pose=robot.ee_pose_topic)

    def required(self) -> dict[str, str]:
        return {
            self.image: "sensor_msgs/msg/Image",
            self.joint_states: "sensor_msgs/msg/JointState",
            self.ee_pose: "geometry_msgs/msg/PoseStamped",
            self.action_chunk: "prophrl_msgs/msg/ActionChunk",
        }

    @property
    def camera_name(self) -> str:
        """'/camera/image_raw' -> 'camera' (the LeRobot feature is observation.images.<camera_name>)."""
        return self.image.strip("/").split("/")[0] or "camera"


@dataclasses.dataclass
class EpisodeSamples:
    """One bag's aligned samples; every array has one row per kept camera frame."""

    bag_path: Path
    episode_id: str
    instruction: str
    task: str
    success: bool | None  # None: unknown (a recovered bag whose end did not survive)
    recovered: bool
    frames: np.ndarray  # (N, H, W, 3) uint8
    frame_times_ns: np.ndarray  # (N,) int64, receive times
    joint_positions: np.ndarray  # (N, J) float32, robot joint order
    ee_pose: np.ndarray  # (N, 7) float32
    action_chunks: np.ndarray  # (N, horizon, action_dim) float32: the chunk in force at each frame
    chunk_steps: np.ndarray  # (N,) int32
    action_space: str
    control_period_s: float
    skipped_frames: int
    camera: dict | None = None  # the index.json "camera" entry (see camera_entry), None when uncalibrated

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def state(self) -> np.ndarray:
        return np.concatenate([self.joint_positions, self.ee_pose], axis=1)

    @property
    def actions(self) -> np.ndarray:
        """(N, action_dim): the step of the chunk in force that is due at each frame."""
        return self.action_chunks[np.arange(len(self)), self.chunk_steps]

    @property
    def camera_rate_hz(self) -> float | None:
        if len(self) < 2:
            return None
        return 1e9 / float(np.median(np.diff(self.frame_times_ns)))
