"""Reward-judge node: serves prophrl_msgs/ScoreRollout for the trainer (a thin adapter).

The node is named ``judge`` in namespace ``/prophrl``, so its ``~/score_rollout`` service is
``/prophrl/judge/score_rollout`` (the trainer node's default ``score_service``); ``__node`` /
``__ns`` remapping moves it. A request's frames (sensor_msgs/Image, any 8-bit colour or mono
encoding, one size) are one whole rollout clip, oldest first; the response is the judge's success
probability and its decision (probability >= threshold). Bad requests (no frames, frames of mixed
sizes, an unsupported encoding or inconsistent image data, too many frames) get success=false,
success_probability=NaN and a message saying what was wrong; the node keeps serving.

Parameters: JudgeNodeParameters.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch
from rclpy.node import Node

from prophrl_common.images import ImageConversionError, to_rgb8
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_msgs.srv import ScoreRollout
from prophrl_worldmodel.modeling_judge import load_judge

BACKENDS = ("classifier", "vlm", "auto")


class RequestError(ValueError):
    """A ScoreRollout request that cannot be scored."""


def request_clip(frames, max_frames: int) -> np.ndarray:
    """The request's Images as one (T, H, W, 3) uint8 RGB clip; RequestError says what is wrong."""
    if len(frames) == 0:
        raise RequestError("request has no frames")
    if len(frames) > max_frames:
        raise RequestError(f"request has {len(frames)} frames, more than max_frames {max_frames}")
    arrays = []
    for i, msg in enumerate(frames):
        try:
            arrays.append(to_rgb8(msg))
        except ImageConversionError as exc:
            raise RequestError(f"frame {i}: {exc}") from None
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            raise RequestError(f"frames have mixed sizes: frame 0 is {arrays[0].shape[1]}x{arrays[0].shape[0]}, "
                               f"frame {i} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}")
        if arrays[-1].size == 0:
            raise RequestError(f"frame {i} is empty ({msg.width}x{msg.height})")
    return np.stack(arrays)


@dataclasses.dataclass(frozen=True)
class JudgeNodeParameters:
    judge_path: str = parameter("", "a `prophrl judge train` output directory, a directory holding a saved VLM "
                                    "judge config.json, or (backend vlm) a local transformers VLM directory",
                                required=True)
    backend: str = parameter("classifier", "classifier: the trained video success classifier; vlm: a local "
                                           "image-text-to-text model asked a per-task yes/no prompt; auto: whatever "
                                           "judge_path holds", choices=BACKENDS)
    threshold: float = parameter(-1.0, "success = probability >= threshold; negative: the judge's own (picked on "
                                       "validation data by `prophrl judge train`; 0.5 for a VLM)", maximum=1.0)
    device: str = parameter("cpu", "torch device (cpu, cuda, cuda:1)")
    torch_threads: int = parameter(1, "intra-op CPU threads (1: do not starve the other processes on this CPU)",
                                   minimum=1)
    max_frames: int = parameter(2000, "requests with more frames than this are rejected", minimum=1)


class JudgeNode(Node):
    def __init__(self, node_name: str = "judge", namespace: str = "/prophrl"):
        super().__init__(node_name, namespace=namespace)
        declare_parameters(self, JudgeNodeParameters)
        params = read_parameters(self, JudgeNodeParameters)
        path = params.judge_path
        torch.set_num_threads(params.torch_threads)
        self.judge = load_judge(path, params.backend, params.device)
        self.threshold = params.threshold if params.threshold >= 0 else float(self.judge.threshold)
        self.max_frames = params.max_frames
        self.requests = 0
        self.service = self.create_service(ScoreRollout, "~/score_rollout", self._on_score)
        name = self.resolve_service_name("~/score_rollout")
        self.get_logger().info(f"serving {name}: {self.judge.config.backend} judge from {path}, "
                               f"threshold {self.threshold:.3f}")

    def _on_score(self, request: ScoreRollout.Request, response: ScoreRollout.Response) -> ScoreRollout.Response:
        self.requests += 1
        start = time.perf_counter()
        try:
            clip = request_clip(request.frames, self.max_frames)
            probability = float(self.judge.score([clip], [request.instruction])[0])
        except (RequestError, ValueError) as exc:
            return self._failed(response, f"rejected: {exc}")
        except Exception as exc:  # noqa: BLE001 - a judge failure must not take the service down
            return self._failed(response, f"judge error: {type(exc).__name__}: {exc}")
        response.success_probability = probability
        response.success = probability >= self.threshold
        response.message = (f"scored {len(clip)} frames in {(time.perf_counter() - start) * 1e3:.0f} ms "
                            f"(threshold {self.threshold:.3f})")
        return response

    def _failed(self, response: ScoreRollout.Response, message: str) -> ScoreRollout.Response:
        response.success_probability = float("nan")
        response.success = False
        response.message = message
        self.get_logger().warning(f"ScoreRollout {message}", throttle_duration_sec=2.0)
        return response


def main(args: list[str] | None = None) -> int:
    return run_node(JudgeNode, args)


if __name__ == "__main__":
    sys.exit(main())
