"""Cross-process ActionChunk round-trip latency over DDS (loopback), against a raw Image echo.

Starts the relay node (prophrl_common.testing_nodes) in a second process, sends N chunks
(horizon x action_dim float32) one at a time, and times each echo. Prints p50/p95/p99 and rate.

    python bench/actionchunk_latency.py [--count 1000] [--horizon 20] [--action-dim 7]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from prophrl_common.chunks import array_to_chunk
from prophrl_common.startup import startup_timeout_s
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk


def round_trips(node, executor, pub, make_msg, received, count, warmup=20):
    latencies = []
    for i in range(count + warmup):
        received.clear()
        msg = make_msg(i)
        t0 = time.perf_counter()
        pub.publish(msg)
        if not spin_until(node, lambda: bool(received), 10.0, executor):
            raise RuntimeError(f"message {i} was not echoed within 10 s")
        if i >= warmup:
            latencies.append(time.perf_counter() - t0)
    return np.array(latencies) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--action-dim", type=int, default=7)
    args = parser.parse_args()

    isolate_ros_domain()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    rclpy.init()
    node = Node("latency_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    chunks, images = [], []
    node.create_subscription(ActionChunk, "/prophrl/test/chunk_out", chunks.append, qos)
    node.create_subscription(Image, "/prophrl/test/image_out", images.append, qos)
    chunk_pub = node.create_publisher(ActionChunk, "/prophrl/test/chunk_in", qos)
    image_pub = node.create_publisher(Image, "/prophrl/test/image_in", qos)
    actions = np.random.default_rng(0).normal(size=(args.horizon, args.action_dim)).astype(np.float32)
    pixels = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8).tobytes()

    with node_process(python_module_argv("prophrl_common.testing_nodes")) as relay:
        ready = lambda: chunk_pub.get_subscription_count() > 0 and image_pub.get_subscription_count() > 0  # noqa: E731
        if not spin_until(node, ready, startup_timeout_s(), executor):
            raise SystemExit(f"relay node did not come up:\n{relay.output()}")
        results = {
            f"ActionChunk {args.horizon}x{args.action_dim}": round_trips(
                node, executor, chunk_pub, lambda i: array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=i),
                chunks, args.count),
            "Image 224x224 rgb8 (floor)": round_trips(
                node, executor, image_pub, lambda i: Image(height=224, width=224, encoding="rgb8", step=672, data=pixels),
                images, args.count),
        }
    node.destroy_node()
    rclpy.shutdown()

    print(f"\nCross-process round trip over DDS (loopback), {args.count} messages each, one in flight")
    print(f"{'message':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for name, lat in results.items():
        print(f"{name:34s} {np.percentile(lat, 50):8.3f} {np.percentile(lat, 95):8.3f} "
              f"{np.percentile(lat, 99):8.3f} {lat.max():8.3f}")


if __name__ == "__main__":
    main()
