"""Policy inference latency (in process) and camera -> ActionChunk latency across processes, in one run.

Three paths take turns, one per camera period (`--rate`), `--frames` times each, so that a neighbour's load
and this machine's moods fall on all three alike (machines of this kind vary 1.5x from one minute to the
next):
  - raw Image echo: a 128x128 rgb8 frame to a relay node and back (two hops);
  - camera -> policy node (separate process, replan_period_s=0: inference on every frame) -> ActionChunk
    back (two hops + the node's work); latency = receive time - the frame's header stamp;
  - in process: the same frame through Observation.from_frames and VLAPolicy.predict_action_chunk (ODE,
    K steps, one torch thread), the work the node does per frame without ROS.
Then where the node's time goes: its own per-stage p50s from /diagnostics (frame age on arrival, prepare,
inference, publish); "chunk transport back" is the end-to-end p50 minus their sum. The goal line compares
camera -> ActionChunk p50 with in-process p50 + 2 x echo p50. Back-to-back in-process ODE and SDE rows
(no camera pacing) close the table.

    python bench/policy_latency.py [--config tiny | --checkpoint DIR] [--frames 100] [--rate 10]
--checkpoint: a saved policy (e.g. a `prophrl policy distill` output, sampled with its own few steps) instead of a
fresh one of --config.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import tempfile
import time

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from prophrl_common.images import numpy_to_image
from prophrl_common.startup import startup_timeout_s
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_policy.transforms import policy_state

INSTRUCTION = "lift the red cube"
NODE_STAGES = ("frame_age", "prepare", "inference", "publish")
ECHO, NODE, IN_PROCESS = "raw Image echo (2 hops)", "camera -> policy node -> ActionChunk", "in process, same frame"


def percentiles(values_ms) -> str:
    v = np.asarray(values_ms)
    return f"{np.percentile(v, 50):8.2f} {np.percentile(v, 95):8.2f} {v.mean():8.2f} {len(v):6d}"


def back_to_back(policy: VLAPolicy, iterations: int, mode: str) -> list[float]:
    obs = Observation(torch.rand(1, 3, 128, 128), [INSTRUCTION], torch.randn(1, 8))
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        for i in range(iterations + 5):
            start = time.perf_counter()
            policy.predict_action_chunk(obs, mode=mode, generator=g)
            if i >= 5:
                out.append((time.perf_counter() - start) * 1e3)
    return out


class Paths:
    """The bench's side of the three paths: publishers, what came back, and the in-process policy."""

    def __init__(self, node: Node, executor, policy: VLAPolicy):
        self.node, self.executor, self.policy = node, executor, policy
        clock = node.get_clock()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.echoes, self.chunks, self.diagnostics = [], [], []
        node.create_subscription(Image, "/prophrl/test/image_out",
                                 lambda m: self.echoes.append((m, clock.now().nanoseconds * 1e-9)), qos)
        node.create_subscription(ActionChunk, "/prophrl/action_chunk",
                                 lambda m: self.chunks.append((m, clock.now().nanoseconds * 1e-9)), 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.echo_pub = node.create_publisher(Image, "/prophrl/test/image_in", qos)
        self.camera_pub = node.create_publisher(Image, "/camera/image_raw", qos)
        self.pose_pub = node.create_publisher(PoseStamped, "/prophrl/ee_pose", 10)
        self.pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
        self.generator = torch.Generator().manual_seed(0)

    def ready(self) -> bool:
        return self.echo_pub.get_subscription_count() > 0 and self.camera_pub.get_subscription_count() > 0

    def _frame(self) -> Image:
        return numpy_to_image(self.pixels, "rgb8", stamp=self.node.get_clock().now().to_msg())

    def _pose(self) -> None:
        pose = PoseStamped()
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)

    def _infer(self) -> float:
        start = time.perf_counter()
        obs = Observation.from_frames(self.pixels[None], [INSTRUCTION],
                                      policy_state(np.array([0, 0, 0, 0, 0, 0, 1.0]), 0.0)[None], self.policy.config)
        with torch.inference_mode():
            self.policy.predict_action_chunk(obs, generator=self.generator)
        return (time.perf_counter() - start) * 1e3

    def run(self, paths: tuple[str, ...], frames: int, rate: float) -> dict[str, list[float]]:
        """Each path in turn, one per period, `frames` times: latency (ms) of every answer or inference."""
        out = {path: [] for path in paths}
        self.echoes.clear()
        self.chunks.clear()
        period = 1.0 / rate
        for _ in range(frames):
            for path in paths:
                t0 = time.monotonic()
                self._pose()  # the node acts only on a fresh end-effector pose
                if path == ECHO:
                    self.echo_pub.publish(self._frame())
                elif path == NODE:
                    self.camera_pub.publish(self._frame())
                else:
                    out[IN_PROCESS].append(self._infer())
                while time.monotonic() - t0 < period:
                    self.executor.spin_once(timeout_sec=max(0.0, period - (time.monotonic() - t0)))
                for path_name, received in ((ECHO, self.echoes), (NODE, self.chunks)):
                    while received:
                        msg, arrival = received.pop(0)
                        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                        if path_name in out:
                            out[path_name].append((arrival - stamp) * 1e3)
        return out

    def node_stages(self, timeout_s: float = 5.0) -> tuple[dict[str, float], int]:
        """The policy node's per-stage p50s (ms) from its next /diagnostics status, and its chunk count."""
        self.diagnostics.clear()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.1)
            for msg in self.diagnostics:
                for status in msg.status:
                    if status.name.endswith(": policy"):
                        values = {kv.key: kv.value for kv in status.values}
                        return ({stage: float(values[f"{stage}_p50_ms"]) for stage in NODE_STAGES},
                                int(values["chunks_published"]))
        raise SystemExit("the policy node published no /diagnostics status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--checkpoint", default="", help="a policy checkpoint instead of a fresh --config policy")
    parser.add_argument("--frames", type=int, default=100, help="measurements per path")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate (Hz): one path per period")
    args = parser.parse_args()
    torch.set_num_threads(1)

    policy = VLAPolicy.from_pretrained(args.checkpoint) if args.checkpoint else VLAPolicy(get_vla_config(args.config))
    policy.eval()
    isolate_ros_domain()
    rclpy.init()
    node = Node("policy_latency_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    paths = Paths(node, executor, policy)
    with tempfile.TemporaryDirectory() as tmp, \
            node_process(python_module_argv("prophrl_common.testing_nodes")) as relay:
        checkpoint = args.checkpoint or policy.save_pretrained(f"{tmp}/policy")
        argv = python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={checkpoint}",
                                  "-p", "replan_period_s:=0.0", "-p", f"instruction:={INSTRUCTION}",
                                  "-p", "diagnostics_period_s:=0.5")
        with node_process(argv) as policy_proc:
            if not spin_until(node, paths.ready, startup_timeout_s(), executor):
                raise SystemExit(f"nodes did not come up:\n{relay.output()}\n{policy_proc.output()}")
            paths.run((NODE, IN_PROCESS), 10, args.rate)  # warm-up
            rows = paths.run((ECHO, NODE, IN_PROCESS), args.frames, args.rate)
            stages, chunks = paths.node_stages()
    node.destroy_node()
    rclpy.shutdown()
    k = policy.config.num_inference_steps
    rows[f"in process, back to back, ODE (K={k})"] = back_to_back(policy, 100, "ode")
    rows[f"in process, back to back, SDE (K={k})"] = back_to_back(policy, 100, "sde")

    end_to_end = float(np.percentile(rows[NODE], 50))
    print(f"\nWhere the policy node's time goes (its own p50s from /diagnostics over its last {chunks} chunks, "
          f"warm-up included)")
    for stage, p50 in stages.items():
        print(f"  node: {stage:36s} {p50:8.2f}")
    print(f"  {'chunk transport back (end-to-end - sum)':42s} {end_to_end - sum(stages.values()):8.2f}")

    inference = float(np.percentile(rows[IN_PROCESS], 50))
    echo = float(np.percentile(rows[ECHO], 50))
    goal = inference + 2 * echo
    print(f"\ncamera -> ActionChunk p50 {end_to_end:.2f} ms; goal <= in-process p50 + 2 x echo p50 = "
          f"{inference:.2f} + 2 x {echo:.2f} = {goal:.2f} ms: {'met' if end_to_end <= goal else 'NOT met'} "
          f"(the node adds {end_to_end - inference:.2f} ms to inference)")

    print(f"\nPolicy latency ({args.checkpoint or args.config}, CPU, 1 thread for in-process; 128x128 rgb8 camera at "
          f"{args.rate:g} Hz, paths taking turns)")
    print(f"{'path':44s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s} {'n':>6s}")
    for name, values in rows.items():
        print(f"{name:44s} {percentiles(values)}")


if __name__ == "__main__":
    main()
