"""Small real nodes for interface tests and transport benchmarks (`python -m prophrl_common.testing_nodes`).

- relays ActionChunk /prophrl/test/chunk_in -> /prophrl/test/chunk_out and Image /prophrl/test/image_in
  -> /prophrl/test/image_out unchanged (round-trip latency = the transport floor);
- serves LoadPolicy on ~/load_policy: succeeds for an existing file, fails with the reason otherwise;
- with parameter exit_after_s > 0, exits after that long with code `exit_code` (default 3; to test supervisors);
- serves the Imagine action on ~/imagine: returns each rollout's last context frame once per chunk, shifted
  by the chunk's first action, with feedback after every chunk.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from rclpy.action import ActionServer
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_msgs.action import Imagine
from prophrl_msgs.msg import ActionChunk
from prophrl_msgs.srv import LoadPolicy


@dataclasses.dataclass(frozen=True)
class InterfaceTestNodeParameters:
    exit_after_s: float = parameter(0.0, "exit after this long (0: never)", minimum=0.0)
    exit_code: int = parameter(3, "the exit code then", minimum=0, maximum=255)


class InterfaceTestNode(Node):
    def __init__(self):
        super().__init__("interface_test_node")
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._chunk_out = self.create_publisher(ActionChunk, "/prophrl/test/chunk_out", qos)
        self._image_out = self.create_publisher(Image, "/prophrl/test/image_out", qos)
        self.create_subscription(ActionChunk, "/prophrl/test/chunk_in", self._chunk_out.publish, qos)
        self.create_subscription(Image, "/prophrl/test/image_in", self._image_out.publish, qos)
        self.create_service(LoadPolicy, "~/load_policy", self._load_policy)
        self._imagine = ActionServer(self, Imagine, "~/imagine", self._run_imagine)
        self.exit_code, self.exiting = 0, False
        declare_parameters(self, InterfaceTestNodeParameters)
        params = read_parameters(self, InterfaceTestNodeParameters)
        self._code_at_exit = params.exit_code
        if params.exit_after_s > 0:
            self._exit_timer = self.create_timer(params.exit_after_s, self._exit)

    def _exit(self):
        self.get_logger().error(f"exit_after_s elapsed: exiting with code {self._code_at_exit}")
        self._exit_timer.cancel()
        self.exit_code, self.exiting = self._code_at_exit, True

    def _load_policy(self, request, response):
        if os.path.isfile(request.checkpoint_path):
            response.success = True
            response.message = f"loaded version {request.policy_version}"
        else:
            response.success = False
            response.message = f"checkpoint not found: {request.checkpoint_path}"
        return response

    def _run_imagine(self, goal_handle):
        goal = goal_handle.request
        result = Imagine.Result()
        total = goal.num_rollouts * goal.chunks_per_rollout
        if not goal.context_frames or len(goal.chunks) != total:
            goal_handle.abort()
            result.success = False
            result.message = f"need context frames and {total} chunks, got {len(goal.chunks)}"
            return result
        start = goal.context_frames[-1]
        for i, chunk in enumerate(goal.chunks):
            frame = Image(height=start.height, width=start.width, encoding=start.encoding, step=start.step,
                          is_bigendian=start.is_bigendian)
            shift = int(round(chunk.data[0])) if chunk.data else 0
            frame.data = bytes((b + shift) % 256 for b in bytes(start.data))
            result.frames.append(frame)
            feedback = Imagine.Feedback(chunks_done=i + 1, chunks_total=total, stage="imagining")
            goal_handle.publish_feedback(feedback)
            time.sleep(0.01)
        goal_handle.succeed()
        result.success = True
        result.num_rollouts = goal.num_rollouts
        result.chunks_per_rollout = goal.chunks_per_rollout
        result.frames_per_chunk = 1
        return result


def main(argv=None) -> int:
    return run_node(InterfaceTestNode, argv, executor=lambda _node: MultiThreadedExecutor(num_threads=2),
                    keep_running=lambda node: not node.exiting, exit_code=lambda node: node.exit_code)


if __name__ == "__main__":
    sys.exit(main())
