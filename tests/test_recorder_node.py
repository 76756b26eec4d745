"""recorder_node in its own process over DDS: episodes in, rosbag2 bags out (read back with prophrl_data.bag_reader)."""

import os
import signal
import time

import numpy as np
import pytest
import yaml
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String

from prophrl_common.bag_error import BagError
from prophrl_data.bag_reader import open_bag
from prophrl_common.chunks import array_to_chunk, chunk_to_array
from prophrl_common.images import image_to_numpy, numpy_to_image
from prophrl_common.testing import decode_bag_with_third_party_readers, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk, EpisodeEvent

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


class EpisodeSource:
    """The test's side of the graph: the topics a sim/teleop setup publishes."""

    def __init__(self, node: Node):
        self.node = node
        self.image = node.create_publisher(Image, "/camera/image_raw", RELIABLE)
        self.camera_info = node.create_publisher(CameraInfo, "/camera/camera_info", RELIABLE)
        self.joints = node.create_publisher(JointState, "/joint_states", RELIABLE)
        self.ee_pose = node.create_publisher(PoseStamped, "/prophrl/ee_pose", RELIABLE)
        self.chunk = node.create_publisher(ActionChunk, "/prophrl/action_chunk", RELIABLE)
        self.instruction = node.create_publisher(String, "/prophrl/instruction", LATCHED)
        self.camera_pose = node.create_publisher(PoseStamped, "/camera/pose", LATCHED)
        self.episode = node.create_publisher(EpisodeEvent, "/prophrl/episode", RELIABLE)
        self.last_bags = []
        node.create_subscription(String, "/recorder_node/last_bag", lambda msg: self.last_bags.append(msg.data),
                                 LATCHED)

    def publishers(self):
        return [self.image, self.camera_info, self.joints, self.ee_pose, self.chunk, self.instruction,
                self.camera_pose, self.episode]

    def wait_for_recorder(self, recorder) -> None:
        subscribed = lambda: all(pub.get_subscription_count() > 0 for pub in self.publishers())
        assert spin_until(self.node, subscribed, 20), recorder.output()

    def start(self, episode_id: str, bag_dir, recorder) -> None:
        self.episode.publish(EpisodeEvent(event=EpisodeEvent.START, episode_id=episode_id, robot="panda_sim",
                                          task="lift"))
        # other topics may overtake the event: send data only once the recorder has opened the bag
        assert spin_until(self.node, lambda: (bag_dir / episode_id).is_dir(), 10), recorder.output()

    def publish_step(self, step: int, stamp_s: float) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.random.default_rng(step).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        self.image.publish(numpy_to_image(pixels, "rgb8", stamp=stamp_s, frame_id="camera"))
        self.joints.publish(JointState(name=JOINTS, position=[0.1 * step + j for j in range(7)]))
        pose = PoseStamped()
        pose.pose.position.x = float(step)
        self.ee_pose.publish(pose)
        actions = np.full((4, 7), step, np.float32)
        if step % 3 == 0:
            self.chunk.publish(array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=step))
        return pixels, actions


@pytest.fixture
def source():
    rclpy.init()
    node = Node("recorder_test_source")
    yield EpisodeSource(node)
    node.destroy_node()
    rclpy.shutdown()


def recorded_counts(bag_path) -> dict[str, int]:
    """Message counts of a bag while the recorder is still writing it (what has reached the file)."""
    try:
        return {topic: info.message_count for topic, info in open_bag(bag_path).topics.items()}
    except BagError:  # nothing flushed yet
        return {}


def recorder_argv(bag_dir):
    return python_module_argv("prophrl_robot.recorder_node", "-p", f"output_dir:={bag_dir}",
                              "-p", "flush_period_s:=0.1")


def test_episode_is_recorded_with_contents_and_metadata(source, tmp_path):
    with node_process(recorder_argv(tmp_path)) as recorder:
        source.wait_for_recorder(recorder)
        source.instruction.publish(String(data="lift the red cube"))  # latched, before the episode
        source.camera_info.publish(CameraInfo(width=64, height=48))
        source.start("episode_a", tmp_path, recorder)
        sent_pixels, sent_chunks = [], []
        for step in range(30):
            pixels, actions = source.publish_step(step, stamp_s=100.0 + step * 0.05)
            sent_pixels.append(pixels)
            if step % 3 == 0:
                sent_chunks.append(actions)
            time.sleep(0.005)
        # DDS may deliver a resent sample after the closing event: wait until everything is on disk
        expected = {"/camera/image_raw": 30, "/joint_states": 30, "/prophrl/ee_pose": 30, "/prophrl/action_chunk": 10}
        on_disk = lambda: expected.items() <= recorded_counts(tmp_path / "episode_a").items()
        assert spin_until(source.node, on_disk, 10), recorder.output()
        source.episode.publish(EpisodeEvent(event=EpisodeEvent.SUCCESS, episode_id="episode_a"))
        assert spin_until(source.node, lambda: source.last_bags, 10), recorder.output()
        assert "closed bag" in recorder.output()

    bag_path = tmp_path / "episode_a"
    assert source.last_bags == [str(bag_path)]
    bag = open_bag(bag_path)
    assert not bag.recovered
    counts = {topic: info.message_count for topic, info in bag.topics.items()}
    # camera_info was published (volatile) just before START: DDS may deliver it either side of the START
    assert counts.pop("/camera/camera_info", 0) <= 1
    assert counts == {"/camera/image_raw": 30, "/joint_states": 30, "/prophrl/ee_pose": 30,
                      "/prophrl/action_chunk": 10, "/prophrl/instruction": 1, "/prophrl/episode": 2}
    assert bag.topics["/prophrl/action_chunk"].msgtype == "prophrl_msgs/msg/ActionChunk"
    assert {k: bag.custom_data[k] for k in ("episode_id", "instruction", "robot", "task", "success", "end_reason")} \
        == {"episode_id": "episode_a", "instruction": "lift the red cube", "robot": "panda_sim", "task": "lift",
            "success": "true", "end_reason": "SUCCESS"}

    images = list(bag.messages(["/camera/image_raw"]))
    for step, (message, pixels) in enumerate(zip(images, sent_pixels, strict=True)):
        np.testing.assert_array_equal(image_to_numpy(deserialize_message(message.data, Image)), pixels)
        assert message.publish_time_ns == round((100.0 + step * 0.05) * 1e9)  # header stamp
    receive_times = [m.log_time_ns for m in images]
    assert receive_times == sorted(receive_times) and receive_times[-1] - receive_times[0] < 5e9
    chunks = [deserialize_message(m.data, ActionChunk) for m in bag.messages(["/prophrl/action_chunk"])]
    for msg, actions in zip(chunks, sent_chunks, strict=True):
        np.testing.assert_array_equal(chunk_to_array(msg), actions)
    events = [bag.deserialize(m).event for m in bag.messages(["/prophrl/episode"])]
    assert events == [EpisodeEvent.START, EpisodeEvent.SUCCESS]
    decoded = decode_bag_with_third_party_readers(bag_path)  # every topic, strictly, by rosbags and mcap-ros2
    assert decoded == {topic: info.message_count for topic, info in bag.topics.items()}


def test_latched_messages_are_logged_at_the_start_not_when_first_received(source, tmp_path):
    """A latched message received long before an episode (the previous episode's /camera/pose) is written
    into the bag right after START, at START's receive time; its header stamp stays its publish time."""
    with node_process(recorder_argv(tmp_path)) as recorder:
        source.wait_for_recorder(recorder)
        pose = PoseStamped()
        pose.header.stamp.sec, pose.header.frame_id = 42, "panda_link0"
        source.camera_pose.publish(pose)
        source.instruction.publish(String(data="lift the cube"))
        source.start("episode_early", tmp_path, recorder)  # the recorder holds the latched messages once
        has_pose = lambda: recorded_counts(tmp_path / "episode_early").get("/camera/pose") == 1
        assert spin_until(source.node, has_pose, 10), recorder.output()  # this bag has them: the recorder does
        source.episode.publish(EpisodeEvent(event=EpisodeEvent.SUCCESS, episode_id="episode_early"))
        assert spin_until(source.node, lambda: len(source.last_bags) == 1, 10), recorder.output()
        spin_until(source.node, lambda: False, 1.5)  # the latched messages age before the next episode
        source.start("episode_late", tmp_path, recorder)
        for step in range(5):
            source.publish_step(step, stamp_s=50.0 + step * 0.05)
        on_disk = lambda: recorded_counts(tmp_path / "episode_late").get("/camera/image_raw") == 5
        assert spin_until(source.node, on_disk, 10), recorder.output()
        source.episode.publish(EpisodeEvent(event=EpisodeEvent.SUCCESS, episode_id="episode_late"))
        assert spin_until(source.node, lambda: len(source.last_bags) == 2, 10), recorder.output()

    bag = open_bag(tmp_path / "episode_late")
    messages = list(bag.messages())
    assert messages[0].topic == "/prophrl/episode" and bag.deserialize(messages[0]).event == EpisodeEvent.START
    start_ns = messages[0].log_time_ns
    assert min(m.log_time_ns for m in messages) == start_ns, [(m.topic, m.log_time_ns - start_ns) for m in messages]
    (pose_message,) = bag.messages(["/camera/pose"])
    assert pose_message.log_time_ns == start_ns and pose_message.publish_time_ns == 42 * 10**9
    (instruction,) = bag.messages(["/prophrl/instruction"])
    assert instruction.log_time_ns == start_ns
    metadata = yaml.safe_load((tmp_path / "episode_late" / "metadata.yaml").read_text())
    assert metadata["rosbag2_bagfile_information"]["starting_time"]["nanoseconds_since_epoch"] == start_ns


def test_killed_recorder_leaves_a_readable_bag(source, tmp_path):
    with node_process(recorder_argv(tmp_path)) as recorder:
        source.wait_for_recorder(recorder)
        source.instruction.publish(String(data="open the drawer"))
        source.start("episode_killed", tmp_path, recorder)
        for step in range(40):
            source.publish_step(step, stamp_s=float(step))
            time.sleep(0.005)
        on_disk = lambda: recorded_counts(tmp_path / "episode_killed").get("/camera/image_raw") == 40
        assert spin_until(source.node, on_disk, 10), recorder.output()  # the writer flushes every 0.1 s
        os.killpg(recorder.proc.pid, signal.SIGKILL)
        recorder.proc.wait(5)

    bag_path = tmp_path / "episode_killed"
    assert not (bag_path / "metadata.yaml").exists()
    bag = open_bag(bag_path)
    assert bag.recovered
    assert bag.topics["/camera/image_raw"].message_count == 40  # everything that reached the disk before the kill
    assert len(list(bag.messages(["/camera/image_raw"]))) == bag.topics["/camera/image_raw"].message_count
    assert bag.custom_data["episode_id"] == "episode_killed"
    assert bag.custom_data["instruction"] == "open the drawer"
    assert "success" not in bag.custom_data  # only known at close
