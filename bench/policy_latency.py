"""Policy inference latency (in process) and camera -> ActionChunk latency across processes.

1. In process: VLAPolicy.predict_action_chunk on one 128x128 frame (ODE and SDE, K steps), p50/p95.
2. Across processes, same run: a raw rclpy Image echo (relay node, two hops) vs. camera frame ->
   policy node (separate process, replan_period_s=0: inference on every frame) -> ActionChunk back
   (two hops + inference). Latency = receive time - the frame's header stamp.

    python bench/policy_latency.py [--config tiny] [--frames 200] [--rate 10]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import tempfile
import time

import numpy as np
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from geometry_msgs.msg import PoseStamped

from prophrl_common.images import numpy_to_image
from prophrl_common.startup import startup_timeout_s
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import Observation, VLAPolicy


def percentiles(values_ms) -> str:
    v = np.asarray(values_ms)
    return f"{np.percentile(v, 50):8.2f} {np.percentile(v, 95):8.2f} {v.mean():8.2f} {len(v):6d}"


def in_process(policy: VLAPolicy, iterations: int, mode: str) -> list[float]:
    obs = Observation(torch.rand(1, 3, 128, 128), ["lift the red cube"], torch.randn(1, 8))
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        for i in range(iterations + 5):
            start = time.perf_counter()
            policy.predict_action_chunk(obs, mode=mode, generator=g)
            if i >= 5:
                out.append((time.perf_counter() - start) * 1e3)
    return out


def stream(node, executor, publisher, received, frames: int, rate: float, pose_pub=None) -> list[float]:
    """Publish frames at `rate` Hz; latency of each echo/chunk = now - stamp of the frame it answers."""
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    latencies = []
    received.clear()
    period = 1.0 / rate
    for _ in range(frames):
        t0 = time.monotonic()
        if pose_pub is not None:
            pose = PoseStamped()
            pose.pose.orientation.w = 1.0
            pose_pub.publish(pose)
        publisher.publish(numpy_to_image(pixels, "rgb8", stamp=node.get_clock().now().to_msg()))
        while time.monotonic() - t0 < period:
            executor.spin_once(timeout_sec=max(0.0, period - (time.monotonic() - t0)))
        while received:
            msg, arrival = received.pop(0)
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            latencies.append((arrival - stamp) * 1e3)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate (Hz) for the cross-process part")
    args = parser.parse_args()
    torch.set_num_threads(1)

    policy = VLAPolicy(get_vla_config(args.config)).eval()
    rows = {f"in-process {args.config} ODE (K={policy.config.num_inference_steps})": in_process(policy, 100, "ode"),
            f"in-process {args.config} SDE (K={policy.config.num_inference_steps})": in_process(policy, 100, "sde")}

    isolate_ros_domain()
    rclpy.init()
    node = Node("policy_latency_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    clock = node.get_clock()
    echoes, chunks = [], []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/prophrl/test/image_out", lambda m: echoes.append((m, clock.now().nanoseconds * 1e-9)), qos)
    node.create_subscription(ActionChunk, "/prophrl/action_chunk", lambda m: chunks.append((m, clock.now().nanoseconds * 1e-9)), 10)
    echo_pub = node.create_publisher(Image, "/prophrl/test/image_in", qos)
    camera_pub = node.create_publisher(Image, "/camera/image_raw", qos)
    pose_pub = node.create_publisher(PoseStamped, "/prophrl/ee_pose", 10)

    with tempfile.TemporaryDirectory() as tmp, \
            node_process(python_module_argv("prophrl_common.testing_nodes")) as relay:
        checkpoint = policy.save_pretrained(f"{tmp}/policy")
        argv = python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={checkpoint}",
                                  "-p", "replan_period_s:=0.0", "-p", "instruction:=lift the red cube")
        with node_process(argv) as policy_proc:
            ready = lambda: echo_pub.get_subscription_count() > 0 and camera_pub.get_subscription_count() > 0  # noqa: E731
            if not spin_until(node, ready, startup_timeout_s(), executor):
                raise SystemExit(f"nodes did not come up:\n{relay.output()}\n{policy_proc.output()}")
            stream(node, executor, camera_pub, chunks, 20, args.rate, pose_pub)  # warm-up
            rows["raw Image echo (2 hops)"] = stream(node, executor, echo_pub, echoes, args.frames, args.rate)
            rows["camera -> policy node -> ActionChunk"] = stream(node, executor, camera_pub, chunks, args.frames,
                                                                  args.rate, pose_pub)
    node.destroy_node()
    rclpy.shutdown()

    print(f"\nPolicy latency ({args.config}, CPU, 1 thread for in-process; 128x128 rgb8 camera at {args.rate:g} Hz)")
    print(f"{'path':44s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s} {'n':>6s}")
    for name, values in rows.items():
        print(f"{name:44s} {percentiles(values)}")


if __name__ == "__main__":
    main()
