"""Write a sim episode run in-process (prophrl_trainer.sim_rollout) to the rosbag2 layout the recorder node writes.

Same topics, message types and custom_data as `recorder_node`, so `bags2dataset`, `ros2 bag play`
and the world-model datasets cannot tell the two sources apart. Times are sim time from a start
stamp (log_time = header stamp).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import String

from prophrl_data.bag_format import TopicQos
from prophrl_data.bag_writer import BagWriter
from prophrl_common.chunks import array_to_chunk
from prophrl_common.images import numpy_to_image
from prophrl_msgs.msg import EpisodeEvent
from prophrl_data.episode_steps import EpisodeOutcome, StepRecord

TOPICS = {
    "/camera/image_raw": ("sensor_msgs/msg/Image", TopicQos(reliable=False)),
    "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", TopicQos(reliable=False)),
    # The camera optical frame's pose in the robot base frame (latched, as sim_node publishes it):
    # with camera_info it is the calibration bags2dataset stores for Prophet's action frames.
    "/camera/pose": ("geometry_msgs/msg/PoseStamped", TopicQos(transient_local=True, depth=1)),
    "/joint_states": ("sensor_msgs/msg/JointState", TopicQos()),
    "/prophrl/action_chunk": ("prophrl_msgs/msg/ActionChunk", TopicQos()),
    "/prophrl/instruction": ("std_msgs/msg/String", TopicQos(transient_local=True, depth=1)),
    "/prophrl/episode": ("prophrl_msgs/msg/EpisodeEvent", TopicQos()),
}


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class EpisodeBagRecorder:
    """Use as `on_step` of sim_rollout.run_episode, then `close(outcome)`."""

    def __init__(self, path: str | Path, sim, task: str, seed: int, start_ns: int | None = None,
                 controller: dict[str, str] | None = None):
        self.sim = sim
        self.robot = sim.robot
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.episode_id = Path(path).name or uuid.uuid4().hex[:12]
        self.meta = {"episode_id": self.episode_id, "instruction": sim.instruction, "robot": self.robot.name,
                     "task": task, "seed": str(seed), "source": "sim_rollout", **(controller or {})}
        self.writer = BagWriter(path, self.meta)
        for topic, (msgtype, qos) in TOPICS.items():
            self.writer.add_topic(topic, msgtype, qos)
        self.writer.add_topic(self.robot.ee_pose_topic, "geometry_msgs/msg/PoseStamped", TopicQos())
        self.camera_info = self._camera_info()
        self._write("/prophrl/instruction", String(data=sim.instruction), self.start_ns)
        self._write("/camera/pose", self._camera_pose(), self.start_ns)
        self._event(EpisodeEvent.START, self.start_ns, False)

    def _camera_info(self) -> CameraInfo:
        model = self.sim.camera_model()
        info = CameraInfo(width=model.width, height=model.height, distortion_model="plumb_bob")
        info.k, info.p = model.k, model.p
        info.d = [0.0] * 5
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.header.frame_id = "camera_optical_frame"
        return info

    def _camera_pose(self) -> PoseStamped:
        """The optical frame's pose in the base frame, as sim_node's latched /camera/pose."""
        pose = self.sim.camera_model().pose
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = _stamp(self.start_ns), self.robot.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose.position)
        (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
         msg.pose.orientation.w) = (float(v) for v in pose.quaternion)
        return msg

    def _write(self, topic: str, msg, ns: int) -> None:
        self.writer.write(topic, serialize_message(msg), ns, ns)

    def _event(self, kind: int, ns: int, success: bool, message: str = "") -> None:
        event = EpisodeEvent(event=kind, episode_id=self.episode_id, instruction=self.sim.instruction,
                             robot=self.robot.name, task=self.meta["task"], success=success, message=message)
        event.header.stamp = _stamp(ns)
        self._write("/prophrl/episode", event, ns)

    def __call__(self, record: StepRecord) -> None:
        ns = self.start_ns + int(round(record.time_s * 1e9))
        stamp = _stamp(ns)
        obs = record.observation
        self.camera_info.header.stamp = stamp
        self._write("/camera/camera_info", self.camera_info, ns)
        self._write("/camera/image_raw", numpy_to_image(record.image, "rgb8", stamp=stamp,
                                                       frame_id="camera_optical_frame"), ns)
        joints = JointState(name=list(obs.joint_names), position=np.asarray(obs.joint_positions, float).tolist(),
                            velocity=np.asarray(obs.joint_velocities, float).tolist())
        joints.header.stamp = stamp
        self._write("/joint_states", joints, ns)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self.robot.base_frame
        p, q = obs.ee_pose.position, obs.ee_pose.quaternion
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, p)
        (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
         pose.pose.orientation.w) = map(float, q)
        self._write(self.robot.ee_pose_topic, pose, ns)
        if record.new_chunk is not None:
            self._write("/prophrl/action_chunk", array_to_chunk(record.new_chunk, "ee_delta_7d", self.robot.control_period_s,
                                                                instruction=self.sim.instruction, stamp=stamp,
                                                                frame_id=self.robot.base_frame), ns)

    def close(self, outcome: EpisodeOutcome) -> Path:
        ns = self.start_ns + int(round(self.sim.time_s * 1e9))
        self._event(EpisodeEvent.SUCCESS if outcome.success else EpisodeEvent.FAILURE, ns, outcome.success,
                    "" if outcome.success else "max steps reached")
        self.writer.set_custom_data({"success": str(outcome.success).lower(),
                                     "end_reason": "SUCCESS" if outcome.success else "FAILURE",
                                     "num_steps": str(outcome.steps)})
        self.writer.close()
        return self.writer.path
