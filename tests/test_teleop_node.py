"""Keyboard teleop node in its own process: key presses -> ActionChunks and episode events over DDS, recorded
by the recorder node into a bag that third-party readers decode."""

import os
import subprocess
import sys

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from prophrl_common.chunks import chunk_to_array
from prophrl_common.bag_error import BagError
from prophrl_data.bag_reader import open_bag
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import NodeProcess, decode_bag_with_third_party_readers, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk, EpisodeEvent


def recorded_chunks(bag_dir) -> int:
    """ActionChunks in the bag the recorder is writing under bag_dir (what has reached the file)."""
    try:
        (bag,) = [p for p in bag_dir.iterdir() if p.is_dir()]
        return open_bag(bag).topics["/prophrl/action_chunk"].message_count
    except (BagError, KeyError, ValueError):  # nothing flushed yet
        return 0


def test_keyboard_teleop_publishes_steps_and_episode_events(tmp_path):
    rclpy.init()
    node = Node("teleop_test_observer")
    chunks, events, bags = [], [], []
    node.create_subscription(ActionChunk, "/prophrl/action_chunk", chunks.append, 10)
    node.create_subscription(EpisodeEvent, "/prophrl/episode", events.append, 10)
    node.create_subscription(String, "/recorder_node/last_bag", lambda msg: bags.append(msg.data),
                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    recorder = NodeProcess(python_module_argv("prophrl_robot.recorder_node", "-p", f"output_dir:={tmp_path}",
                                               "-p", "flush_period_s:=0.1"))
    teleop = subprocess.Popen(
        [sys.executable, "-m", "prophrl_robot.teleop_node", "--ros-args", "-p", "robot:=ur5e_sim",
         "-p", "instruction:=push the block", "-p", "translation_step_m:=0.02"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert spin_until(node, lambda: node.count_publishers("/prophrl/action_chunk") > 0, 20)
        # the recorder subscribes a topic once it sees its publisher (observer + recorder on each)
        recording = lambda: all(node.count_subscribers(t) >= 2 for t in ("/prophrl/action_chunk", "/prophrl/episode"))
        assert spin_until(node, recording, 20), recorder.output()
        spin_until(node, lambda: False, 1.0)  # let discovery settle both ways
        teleop.stdin.write(b"n")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(events) == 1, 10)
        # steps may overtake the START on another topic: send them once the recorder has opened the bag
        assert spin_until(node, lambda: any(p.is_dir() for p in tmp_path.iterdir()), 10), recorder.output()
        teleop.stdin.write(b"ww d")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(chunks) == 4, 10)
        # the SUCCESS that closes the bag may overtake steps too: end the episode once they are on disk
        assert spin_until(node, lambda: recorded_chunks(tmp_path) == 4, 10), recorder.output()
        teleop.stdin.write(b"y")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(events) == 2, 10)
        teleop.stdin.write(b"\x1b")
        teleop.stdin.flush()
        assert teleop.wait(10) == 0
        assert spin_until(node, lambda: bags, 10), recorder.output()
    finally:
        teleop.kill()
        out = teleop.stdout.read().decode(errors="replace")
        recorder.stop()
        os.unlink(recorder.log.name)
        node.destroy_node()
        rclpy.shutdown()

    period = load_robot_config("ur5e_sim").control_period_s
    steps = np.concatenate([chunk_to_array(c) for c in chunks])
    np.testing.assert_allclose(steps[:, :3], [[0.02, 0, 0], [0.02, 0, 0], [0, 0, 0], [0, -0.02, 0]], atol=1e-7)
    assert steps[2, 6] == 1.0 and steps[3, 6] == 1.0, out  # space closed the gripper
    assert all(c.action_space == "ee_delta_7d" and c.control_period_s == np.float32(period) for c in chunks)
    assert all(c.instruction == "push the block" for c in chunks)
    assert [e.event for e in events] == [EpisodeEvent.START, EpisodeEvent.SUCCESS]
    assert events[0].episode_id and events[0].episode_id == events[1].episode_id
    assert events[1].success and events[1].robot == "ur5e_sim"
    # the teleop episode's bag: every topic decodes strictly with rosbags and with mcap-ros2
    bag = open_bag(bags[0])
    assert bag.custom_data["success"] == "true" and bag.custom_data["instruction"] == "push the block"
    assert decode_bag_with_third_party_readers(bags[0]) == {"/prophrl/action_chunk": 4, "/prophrl/episode": 2}
