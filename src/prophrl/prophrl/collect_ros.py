"""`prophrl collect` through the live nodes: start the collect/teleop profile, send CollectEpisode goals.

Goals go out once every node of the profile has announced that it is ready (prophrl_common.startup);
a node that does not come up within the start-up timeout, or a required node that exits, ends the
collection with one line naming it (its log: collect_nodes.log beside the output directory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from prophrl.profiles import load_profile
from prophrl.up import Supervisor


class CollectError(RuntimeError):
    """The live collection cannot go on (a node did not come up or exited, an episode failed)."""


def collect_over_ros(args: argparse.Namespace) -> list[dict]:
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    from tqdm import tqdm

    from prophrl_common.node_runtime import shutdown_rclpy
    from prophrl_common.startup import ReadyWatcher, startup_timeout_s
    from prophrl_msgs.action import CollectEpisode

    out = str(Path(args.out).resolve())
    if args.teleop == "scripted":
        profile = load_profile("collect", {"robot": args.robot, "task": args.task, "out": out,
                                           "noise_std": str(args.noise_std), "skill": str(args.skill)})
    else:
        profile = load_profile("teleop", {"robot": args.robot, "task": args.task, "out": out})
    timeout_s = startup_timeout_s()
    log_path = Path(out).parent / "collect_nodes.log"
    log = open(log_path, "w") if log_path.parent.is_dir() else open(os.devnull, "w")
    where = f"see {log_path}" if log_path.parent.is_dir() else "node output was not kept"
    supervisor = Supervisor(profile, out=log)
    teleop = None
    rows: list[dict] = []
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node("prophrl_collect")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    watcher = ReadyWatcher(node)

    def spin_until(done, timeout: float, what: str):
        """Spin until done() or timeout; a stopping profile (a required node exited) ends it with its reason."""
        deadline = time.monotonic() + timeout
        while not done():
            if supervisor.exited_required():
                name, code = supervisor.exited_required()[0]
                raise CollectError(f"node {name} exited with code {code} ({what}; {where})")
            if time.monotonic() >= deadline:
                raise CollectError(f"no answer within {timeout:g} s: {what} ({where})")
            executor.spin_once(timeout_sec=0.1)

    try:
        supervisor.start()
        ready = supervisor.wait_until_ready(watcher, lambda t: executor.spin_once(timeout_sec=t), timeout_s)
        if not ready:
            name, code = supervisor.exited_required()[0]
            raise CollectError(f"node {name} exited with code {code} while starting ({where})")
        if args.teleop != "scripted":
            # The operator's device runs in this terminal (keyboard needs its stdin).
            teleop = subprocess.Popen([sys.executable, "-m", "prophrl_robot.teleop_node", "--ros-args",
                                       "-p", f"device:={args.teleop}", "-p", f"robot:={args.robot}",
                                       "-p", "use_sim_time:=true"])  # the teleop profile's sim time
        client = ActionClient(node, CollectEpisode, "/collector/collect_episode")
        spin_until(client.server_is_ready, timeout_s, "the collector's CollectEpisode action")
        max_duration = args.max_steps * 0.05 if args.teleop == "scripted" else 600.0
        bar = tqdm(range(args.seed, args.seed + args.episodes), desc=f"collect {args.task} (ros)", unit="episode")
        for seed in bar:
            goal = CollectEpisode.Goal(instruction="", max_duration_s=float(max_duration), task=args.task,
                                       teleop=args.teleop, seed=seed)
            send = client.send_goal_async(goal)
            spin_until(send.done, timeout_s, f"episode {seed}: CollectEpisode goal")
            handle = send.result()
            if handle is None or not handle.accepted:
                raise CollectError("CollectEpisode goal was rejected")
            result_future = handle.get_result_async()
            spin_until(result_future.done, max_duration + timeout_s, f"episode {seed}: CollectEpisode result")
            result = result_future.result().result
            if not result.bag_path:
                raise CollectError(f"episode {seed} failed: {result.message}")
            rows.append({"seed": seed, "success": result.success, "steps": result.num_steps, "bag": result.bag_path})
            bar.set_postfix(success=f"{sum(r['success'] for r in rows)}/{len(rows)}")
    finally:
        if teleop is not None:
            teleop.terminate()
            teleop.wait(10)
        supervisor.request_stop("collection finished")
        supervisor.shutdown()
        executor.shutdown()
        node.destroy_node()
        shutdown_rclpy()
        log.close()
    return rows
