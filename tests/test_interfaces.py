"""prophrl_msgs across real processes over DDS: topics, services, actions."""

import numpy as np
import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from prophrl_common.chunks import InvalidChunkError, array_to_chunk, chunk_to_array
from prophrl_common.testing import node_process, python_module_argv, spin_until
from prophrl_msgs.action import AdaptWorldModel, CollectEpisode, Imagine
from prophrl_msgs.msg import ActionChunk, EpisodeEvent
from prophrl_msgs.srv import LoadPolicy, ScoreRollout

QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def test_interfaces_have_the_contract_fields():
    chunk = ActionChunk()
    for field in ("header", "action_space", "horizon", "action_dim", "data", "control_period_s", "policy_version"):
        assert hasattr(chunk, field), field
    assert {"checkpoint_path", "policy_version"} <= set(LoadPolicy.Request.get_fields_and_field_types())
    assert {"success", "message"} <= set(LoadPolicy.Response.get_fields_and_field_types())
    assert {"frames", "instruction"} <= set(ScoreRollout.Request.get_fields_and_field_types())
    assert {"success_probability", "success"} <= set(ScoreRollout.Response.get_fields_and_field_types())
    assert {"context_frames", "instruction", "chunks"} <= set(Imagine.Goal.get_fields_and_field_types())
    assert "frames" in Imagine.Result.get_fields_and_field_types()
    assert {"instruction", "max_duration_s"} <= set(CollectEpisode.Goal.get_fields_and_field_types())
    assert {"bag_path", "success"} <= set(CollectEpisode.Result.get_fields_and_field_types())
    assert {"bag_paths", "steps"} <= set(AdaptWorldModel.Goal.get_fields_and_field_types())
    assert "checkpoint_path" in AdaptWorldModel.Result.get_fields_and_field_types()
    assert {"step", "loss"} <= set(AdaptWorldModel.Feedback.get_fields_and_field_types())
    assert EpisodeEvent.SUCCESS != EpisodeEvent.START


def test_chunk_array_round_trip_and_validation():
    actions = np.arange(20 * 7, dtype=np.float32).reshape(20, 7) / 100
    msg = array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=3, instruction="lift")
    np.testing.assert_array_equal(chunk_to_array(msg), actions)
    msg.data = msg.data[:-1]
    with pytest.raises(InvalidChunkError, match="horizon\\*action_dim"):
        chunk_to_array(msg)
    bad = array_to_chunk(actions, "ee_delta_7d", 0.05)
    bad.data[5] = float("nan")
    with pytest.raises(InvalidChunkError, match="NaN"):
        chunk_to_array(bad)
    with pytest.raises(InvalidChunkError, match="action_dim 7"):
        chunk_to_array(array_to_chunk(actions[:, :6], "ee_delta_7d", 0.05))
    with pytest.raises(InvalidChunkError, match="unknown action_space"):
        chunk_to_array(array_to_chunk(actions, "teleport", 0.05))
    with pytest.raises(InvalidChunkError, match="control_period_s"):
        chunk_to_array(array_to_chunk(actions, "ee_delta_7d", 0.0))


@pytest.fixture(scope="module")
def ros_node():
    rclpy.init()
    node = Node("interface_test_client")
    with node_process(python_module_argv("prophrl_common.testing_nodes")) as server:
        yield node, server
    node.destroy_node()
    rclpy.shutdown()


def test_action_chunk_crosses_processes(ros_node):
    node, server = ros_node
    received = []
    sub = node.create_subscription(ActionChunk, "/prophrl/test/chunk_out", received.append, QOS)
    pub = node.create_publisher(ActionChunk, "/prophrl/test/chunk_in", QOS)
    # Both directions matched before the first publish: the relay's echo of a chunk sent while this node's
    # subscription was still unmatched would be lost (volatile QoS).
    assert spin_until(node, lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, 20), \
        server.output()
    rng = np.random.default_rng(0)
    sent = [rng.normal(size=(20, 7)).astype(np.float32) for _ in range(5)]
    for i, actions in enumerate(sent):
        pub.publish(array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=i, instruction="lift the cube"))
    assert spin_until(node, lambda: len(received) == len(sent), 10), server.output()
    for i, (msg, actions) in enumerate(zip(received, sent)):
        assert msg.policy_version == i and msg.instruction == "lift the cube"
        np.testing.assert_array_equal(chunk_to_array(msg), actions)


def test_load_policy_service_round_trip(ros_node, tmp_path):
    node, server = ros_node
    client = node.create_client(LoadPolicy, "/interface_test_node/load_policy")
    assert spin_until(node, client.service_is_ready, 20), server.output()
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    for path, expect in ((str(checkpoint), True), (str(tmp_path / "missing.safetensors"), False)):
        future = client.call_async(LoadPolicy.Request(checkpoint_path=path, policy_version=7))
        rclpy.spin_until_future_complete(node, future, timeout_sec=10)
        response = future.result()
        assert response is not None and response.success is expect
        assert ("version 7" in response.message) if expect else ("not found" in response.message)


def test_imagine_action_with_feedback(ros_node):
    node, server = ros_node
    client = ActionClient(node, Imagine, "/interface_test_node/imagine")
    assert spin_until(node, lambda: client.server_is_ready(), 20), server.output()
    start = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
    num_rollouts, chunks_per_rollout = 2, 3
    chunks = [array_to_chunk(np.full((4, 7), r * 10 + c, np.float32), "ee_delta_7d", 0.05)
              for r in range(num_rollouts) for c in range(chunks_per_rollout)]
    feedback = []
    goal = Imagine.Goal(context_frames=[start], instruction="lift", chunks=chunks,
                        num_rollouts=num_rollouts, chunks_per_rollout=chunks_per_rollout)
    send = client.send_goal_async(goal, feedback_callback=lambda fb: feedback.append(fb.feedback.chunks_done))
    rclpy.spin_until_future_complete(node, send, timeout_sec=10)
    handle = send.result()
    assert handle is not None and handle.accepted
    result_future = handle.get_result_async()
    rclpy.spin_until_future_complete(node, result_future, timeout_sec=20)
    result = result_future.result().result
    assert result.success
    assert len(result.frames) == num_rollouts * chunks_per_rollout
    # frames are rollout-major: frame (r, c) is the start shifted by the first action of chunk (r, c)
    for r in range(num_rollouts):
        for c in range(chunks_per_rollout):
            frame = result.frames[r * chunks_per_rollout + c]
            assert bytes(frame.data) == bytes((b + r * 10 + c) % 256 for b in range(18))
    spin_until(node, lambda: len(feedback) == len(chunks), 5)
    assert feedback == list(range(1, len(chunks) + 1))
    client.destroy()


def test_image_crosses_processes_unchanged(ros_node):
    node, server = ros_node
    received = []
    sub = node.create_subscription(Image, "/prophrl/test/image_out", received.append, QOS)
    pub = node.create_publisher(Image, "/prophrl/test/image_in", QOS)
    assert spin_until(node, lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, 20), \
        server.output()
    pixels = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    pub.publish(Image(height=128, width=128, encoding="rgb8", step=384, data=pixels.tobytes()))
    assert spin_until(node, lambda: len(received) == 1, 10)
    assert bytes(received[0].data) == pixels.tobytes()
