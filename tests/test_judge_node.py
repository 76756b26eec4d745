"""Judge node in its own process: ScoreRollout over DDS gives the in-process judge's probability; bad
requests are answered with success=false and a message, and the node keeps serving."""

import math

import numpy as np
import pytest
import rclpy
import torch
from rclpy.node import Node

from prophrl_common.images import numpy_to_image
from prophrl_common.testing import node_process, python_module_argv, spin_until
from prophrl_msgs.srv import ScoreRollout
from prophrl_worldmodel.configuration_judge import get_judge_config
from prophrl_worldmodel.modeling_judge import RewardJudge

SERVICE = "/prophrl/judge/score_rollout"


def _call(node, client, request):
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=20)
    assert future.done(), "no ScoreRollout response within 20 s"
    return future.result()


@pytest.fixture()
def ros():
    rclpy.init()
    node = Node("judge_node_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def test_judge_node_scores_like_the_judge_and_survives_bad_requests(ros, tmp_path):
    node = ros
    torch.manual_seed(0)
    judge = RewardJudge(get_judge_config("tiny", image_size=32, num_frames=4)).eval()
    # an untrained judge scores near 0.5: a threshold between two clips' scores makes both decisions appear
    clips = [np.random.default_rng(s).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8) for s in (1, 2)]
    expected = judge.score(clips, ["lift the red cube"] * 2).numpy()
    judge.with_threshold(float(expected.mean()))
    path = judge.save_pretrained(tmp_path / "judge")

    with node_process(python_module_argv("prophrl_worldmodel.judge_node", "-p", f"judge_path:={path}")) as proc:
        client = node.create_client(ScoreRollout, SERVICE)
        assert spin_until(node, client.service_is_ready, 30), proc.output()

        for clip, p in zip(clips, expected):
            response = _call(node, client, ScoreRollout.Request(
                frames=[numpy_to_image(f, "rgb8") for f in clip], instruction="lift the red cube"))
            assert response.success_probability == pytest.approx(float(p), abs=1e-5), response.message
            assert response.success == (p >= judge.threshold) and "scored 6 frames" in response.message
        # bgr8 frames are converted to RGB: the same clip scores the same
        bgr = _call(node, client, ScoreRollout.Request(
            frames=[numpy_to_image(np.ascontiguousarray(f[..., ::-1]), "bgr8") for f in clips[0]],
            instruction="lift the red cube"))
        assert bgr.success_probability == pytest.approx(float(expected[0]), abs=1e-5)

        bad_encoding = numpy_to_image(clips[0][0], "rgb8")
        bad_encoding.encoding = "yuv422"
        truncated = numpy_to_image(clips[0][1], "rgb8")
        truncated.height += 1
        for request, message in (
            (ScoreRollout.Request(frames=[], instruction="lift the red cube"), "no frames"),
            (ScoreRollout.Request(frames=[numpy_to_image(clips[0][0], "rgb8"),
                                          numpy_to_image(np.zeros((20, 40, 3), np.uint8), "rgb8")],
                                  instruction="lift"), "mixed sizes"),
            (ScoreRollout.Request(frames=[bad_encoding], instruction="lift"), "unsupported image encoding"),
            (ScoreRollout.Request(frames=[numpy_to_image(clips[0][0], "rgb8"), truncated], instruction="lift"),
             "frame 1"),
        ):
            response = _call(node, client, request)
            assert not response.success and math.isnan(response.success_probability)
            assert message in response.message, response.message

        again = _call(node, client, ScoreRollout.Request(frames=[numpy_to_image(f, "rgb8") for f in clips[1]],
                                                         instruction="lift the red cube"))
        assert again.success_probability == pytest.approx(float(expected[1]), abs=1e-5), "stopped serving"
        assert proc.alive()


def test_judge_node_exits_with_a_clear_error_on_a_missing_judge(tmp_path):
    import subprocess

    argv = python_module_argv("prophrl_worldmodel.judge_node", "-p", f"judge_path:={tmp_path / 'nowhere'}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2   # node_runtime: a node that cannot start
    assert "judge path does not exist" in result.stderr
