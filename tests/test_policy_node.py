"""Policy node in its own process: camera + state -> ActionChunks; LoadPolicy hot swap under load, and
what it refuses to serve."""

import subprocess

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import String

from prophrl_common.chunks import POLICY_STATE_NAMES, chunk_to_array
from prophrl_common.images import numpy_to_image
from prophrl_common.testing import node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk
from prophrl_msgs.srv import LoadPolicy
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.embodiment import Embodiment
from prophrl_policy.modeling_vla import VLAPolicy


def _checkpoint(path, seed, embodiment=None, camera_size=0):
    torch.manual_seed(seed)
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, image_size=32, horizon=5,
                                      camera_size=camera_size), embodiment=embodiment)
    with torch.no_grad():
        policy.action_out[1].weight.normal_(0, 0.1)
    return policy.save_pretrained(path)


def _policy_status(messages) -> dict | None:
    """The key/values of the newest policy node status on /diagnostics."""
    for msg in reversed(messages):
        for status in msg.status:
            if status.name == "policy_node: policy":
                return {kv.key: kv.value for kv in status.values}
    return None


def _call(node, client, request):
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=20)
    return future.result()


@pytest.fixture()
def ros():
    rclpy.init()
    node = Node("policy_node_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def test_policy_node_publishes_chunks_and_survives_a_corrupt_checkpoint(ros, tmp_path):
    node = ros
    # v2 sees the 64 px camera reduced to 16 px first (camera_size), as it would see a 16 px Prophet's frames.
    good_v1, good_v2 = _checkpoint(tmp_path / "v1", 0), _checkpoint(tmp_path / "v2", 1, camera_size=16)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("config.json", "norm_stats.json"):
        (corrupt / name).write_text((good_v1 / name).read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)

    chunks, diagnostics = [], []
    node.create_subscription(ActionChunk, "/prophrl/action_chunk", chunks.append, 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_pub = node.create_publisher(Image, "/camera/image_raw", 1)
    pose_pub = node.create_publisher(PoseStamped, "/prophrl/ee_pose", 10)
    node.create_publisher(String, "/prophrl/instruction",
                          QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)).publish(
        String(data="lift the red cube"))
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)

    def feed():
        stamp = node.get_clock().now().to_msg()
        image_pub.publish(numpy_to_image(frame, "rgb8", stamp=stamp))
        pose = PoseStamped()
        pose.pose.position.z = 1.0
        pose.pose.orientation.w = 1.0
        pose_pub.publish(pose)

    feeder = node.create_timer(0.05, feed)
    argv = python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={good_v1}",
                              "-p", "replan_period_s:=0.1", "-p", "robot:=panda_sim", "-p", "diagnostics_period_s:=0.2")
    with node_process(argv) as policy:
        assert spin_until(node, lambda: len(chunks) >= 3, 60), policy.output()
        # /diagnostics: where each chunk's time went, per stage
        assert spin_until(node, lambda: int((_policy_status(diagnostics) or {}).get("chunks_published", 0)) >= 3,
                           20)
        status = _policy_status(diagnostics)
        for stage in ("frame_age", "prepare", "inference", "publish"):
            p50, p95 = float(status[f"{stage}_p50_ms"]), float(status[f"{stage}_p95_ms"])
            assert 0 <= p50 <= p95 < 60_000, (stage, status)
        assert float(status["inference_p50_ms"]) > 0 and status["policy_version"] == "0"
        first = chunks[-1]
        actions = chunk_to_array(first)
        assert actions.shape == (5, 7) and np.isfinite(actions).all()
        assert first.instruction == "lift the red cube" and first.policy_version == 0
        assert first.header.stamp.sec > 0, "chunks carry the camera frame's stamp"

        client = node.create_client(LoadPolicy, "/policy_node/load_policy")
        assert spin_until(node, client.service_is_ready, 20)
        bad = _call(node, client, LoadPolicy.Request(checkpoint_path=str(corrupt), policy_version=5))
        assert not bad.success and "kept policy version 0" in bad.message and "cannot read weights" in bad.message
        missing = _call(node, client, LoadPolicy.Request(checkpoint_path=str(tmp_path / "nope"), policy_version=6))
        assert not missing.success
        count = len(chunks)
        assert spin_until(node, lambda: len(chunks) >= count + 3, 20), "the node stopped serving after a bad swap"
        assert all(c.policy_version == 0 for c in chunks)

        ok = _call(node, client, LoadPolicy.Request(checkpoint_path=str(good_v2), policy_version=2))
        assert ok.success, ok.message
        assert spin_until(node, lambda: chunks[-1].policy_version == 2, 20)
        assert not np.allclose(chunk_to_array(chunks[-1]), actions), "new weights, new actions"
        assert policy.alive()
    node.destroy_timer(feeder)


def _fr3(**changes):
    fields = dict(robot="franka_fr3", action_space="ee_delta_7d", state_names=POLICY_STATE_NAMES, control_period_s=0.05)
    return Embodiment(**{**fields, **changes})


def test_load_policy_refuses_another_embodiment_and_versions_that_do_not_increase(ros, tmp_path):
    node = ros
    serving = _checkpoint(tmp_path / "fr3_v0", 0, _fr3())
    refused = {  # checkpoint -> what the refusal must say
        _checkpoint(tmp_path / "panda_sim", 1, _fr3(robot="panda_sim")):
            "trained for robot panda_sim, this node drives franka_fr3",
        _checkpoint(tmp_path / "joints", 2, _fr3(action_space="joint_position")):
            "it emits joint_position actions, this node publishes ee_delta_7d",
        _checkpoint(tmp_path / "layout", 3, _fr3(state_names=POLICY_STATE_NAMES[::-1])):
            "its state layout is ['gripper_command'",
    }
    legacy = _checkpoint(tmp_path / "legacy", 4)  # saved before checkpoints recorded their embodiment
    fits = _checkpoint(tmp_path / "fr3_v9", 5, _fr3())
    argv = python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={serving}",
                              "-p", "robot:=franka_fr3")
    with node_process(argv) as policy:
        client = node.create_client(LoadPolicy, "/policy_node/load_policy")
        assert spin_until(node, client.service_is_ready, 60), policy.output()
        for version, (path, reason) in enumerate(refused.items(), start=1):
            answer = _call(node, client, LoadPolicy.Request(checkpoint_path=str(path), policy_version=version))
            assert not answer.success and answer.message.startswith("kept policy version 0: "), answer.message
            assert reason in answer.message, answer.message
        answer = _call(node, client, LoadPolicy.Request(checkpoint_path=str(legacy), policy_version=3))
        assert answer.success, answer.message
        for version in (3, 2):  # equal, then lower: a late or repeated push never replaces newer weights
            answer = _call(node, client, LoadPolicy.Request(checkpoint_path=str(fits), policy_version=version))
            assert not answer.success, answer.message
            assert f"kept policy version 3: version {version} is not newer" in answer.message
        answer = _call(node, client, LoadPolicy.Request(checkpoint_path=str(fits), policy_version=9))
        assert answer.success and "serving policy version 9" in answer.message, answer.message
        assert policy.alive()
        log = policy.output()
    assert "records no robot, action space or state layout" in log  # the legacy checkpoint's warning


def test_a_checkpoint_for_another_robot_fails_configure_with_the_reason(tmp_path):
    path = _checkpoint(tmp_path / "panda_sim", 0, _fr3(robot="panda_sim"))
    proc = subprocess.run(python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={path}",
                                             "-p", "robot:=franka_fr3"), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "trained for robot panda_sim, this node drives franka_fr3" in output, output
    assert "Traceback" not in output, output
