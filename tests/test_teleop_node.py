"""Keyboard teleop node in its own process: key presses -> ActionChunks and episode events over DDS."""

import subprocess
import sys

import numpy as np
import rclpy
from rclpy.node import Node

from prophrl_common.chunks import chunk_to_array
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import spin_until
from prophrl_msgs.msg import ActionChunk, EpisodeEvent


def test_keyboard_teleop_publishes_steps_and_episode_events():
    rclpy.init()
    node = Node("teleop_test_observer")
    chunks, events = [], []
    node.create_subscription(ActionChunk, "/prophrl/action_chunk", chunks.append, 10)
    node.create_subscription(EpisodeEvent, "/prophrl/episode", events.append, 10)
    teleop = subprocess.Popen(
        [sys.executable, "-m", "prophrl_policy.teleop_node", "--ros-args", "-p", "robot:=ur5e_sim",
         "-p", "instruction:=push the block", "-p", "translation_step_m:=0.02"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert spin_until(node, lambda: node.count_publishers("/prophrl/action_chunk") > 0, 20)
        spin_until(node, lambda: False, 1.0)  # let discovery settle both ways
        teleop.stdin.write(b"n")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(events) == 1, 10)
        teleop.stdin.write(b"ww d")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(chunks) == 4, 10)
        teleop.stdin.write(b"y")
        teleop.stdin.flush()
        assert spin_until(node, lambda: len(events) == 2, 10)
        teleop.stdin.write(b"\x1b")
        teleop.stdin.flush()
        assert teleop.wait(10) == 0
    finally:
        teleop.kill()
        out = teleop.stdout.read().decode(errors="replace")
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
