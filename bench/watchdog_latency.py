"""Executor watchdog: time from the last executed step of a chunk to the hold command, over DDS.

Starts executor_node (panda_sim) in its own process, plays the robot driver (ee pose at 100 Hz),
sends a 4-step chunk, and times the zero twist that follows the last step. Repeats --trials times.

    python bench/watchdog_latency.py [--trials 10]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from prophrl_common.chunks import array_to_chunk
from prophrl_common.robots import load_robot_config
from prophrl_common.startup import startup_timeout_s
from prophrl_common.testing import isolate_ros_domain, node_process, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    robot = load_robot_config("panda_sim")
    isolate_ros_domain()
    rclpy.init()
    node = Node("watchdog_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    twists: list[tuple[float, bool]] = []
    node.create_subscription(TwistStamped, robot.twist_topic,
                             lambda m: twists.append((time.monotonic(), m.twist.linear.x != 0.0)), 100)
    pose_pub = node.create_publisher(PoseStamped, robot.ee_pose_topic, 10)
    chunk_pub = node.create_publisher(ActionChunk, "/prophrl/action_chunk", 10)
    middle = (np.array(robot.workspace_min) + np.array(robot.workspace_max)) / 2

    def publish_pose():
        pose = PoseStamped()
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, middle)
        pose.pose.orientation.w = 1.0
        pose_pub.publish(pose)

    node.create_timer(0.01, publish_pose)
    latencies = []
    with node_process(python_module_argv("prophrl_robot.executor_node", "-p", "robot:=panda_sim")) as proc:
        if not spin_until(node, lambda: chunk_pub.get_subscription_count() > 0, startup_timeout_s(), executor):
            raise SystemExit(proc.output())
        spin_until(node, lambda: False, 1.0, executor)
        for _ in range(args.trials):
            twists.clear()
            actions = np.zeros((4, 7), np.float32)
            actions[:, 0] = 0.005
            chunk_pub.publish(array_to_chunk(actions, "ee_delta_7d", robot.control_period_s))

            def hold_seen():
                moving = [t for t, nonzero in twists if nonzero]
                return bool(moving) and any(not nz and t > moving[-1] for t, nz in twists)
            if not spin_until(node, hold_seen, 5.0, executor):
                raise SystemExit("no hold after the chunk ended")
            last_step = max(t for t, nonzero in twists if nonzero)
            hold = min(t for t, nonzero in twists if not nonzero and t > last_step)
            latencies.append((hold - last_step) * 1e3)
            spin_until(node, lambda: False, 0.3, executor)
    node.destroy_node()
    rclpy.shutdown()
    lat = np.array(latencies)
    print(f"\nwatchdog hold after the last step (timeout {robot.watchdog_timeout_s * 1e3:.0f} ms), {len(lat)} trials:")
    print(f"p50 {np.percentile(lat, 50):.1f} ms   p95 {np.percentile(lat, 95):.1f} ms   max {lat.max():.1f} ms")


if __name__ == "__main__":
    main()
