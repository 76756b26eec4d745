"""`prophrl collect` through the live nodes: start the collect/teleop profile, send CollectEpisode goals."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

from prophrl.profiles import load_profile
from prophrl.up import Supervisor


def collect_over_ros(args: argparse.Namespace) -> list[dict]:
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.node import Node
    from tqdm import tqdm

    from prophrl_msgs.action import CollectEpisode

    out = str(Path(args.out).resolve())
    if args.teleop == "scripted":
        profile = load_profile("collect", {"robot": args.robot, "task": args.task, "out": out,
                                           "noise_std": str(args.noise_std), "skill": str(args.skill)})
    else:
        profile = load_profile("teleop", {"robot": args.robot, "task": args.task, "out": out})
    log = open(Path(out).parent / "collect_nodes.log", "w") if Path(out).parent.is_dir() else open(os.devnull, "w")
    supervisor = Supervisor(profile, out=log)
    teleop = None
    rows: list[dict] = []
    rclpy.init()
    node = Node("prophrl_collect")
    try:
        supervisor.start()
        threading.Thread(target=supervisor.wait, daemon=True).start()
        if args.teleop != "scripted":
            # The operator's device runs in this terminal (keyboard needs its stdin).
            teleop = subprocess.Popen([sys.executable, "-m", "prophrl_policy.teleop_node", "--ros-args",
                                       "-p", f"device:={args.teleop}", "-p", f"robot:={args.robot}",
                                       "-p", "use_sim_time:=true"])  # the teleop profile's sim time
        client = ActionClient(node, CollectEpisode, "/collector/collect_episode")
        if not client.wait_for_server(timeout_sec=60):
            raise RuntimeError("the collector node did not come up (see collect_nodes.log)")
        max_duration = args.max_steps * 0.05 if args.teleop == "scripted" else 600.0
        bar = tqdm(range(args.seed, args.seed + args.episodes), desc=f"collect {args.task} (ros)", unit="episode")
        for seed in bar:
            goal = CollectEpisode.Goal(instruction="", max_duration_s=float(max_duration), task=args.task,
                                       teleop=args.teleop, seed=seed)
            send = client.send_goal_async(goal)
            rclpy.spin_until_future_complete(node, send, timeout_sec=30)
            handle = send.result()
            if handle is None or not handle.accepted:
                raise RuntimeError("CollectEpisode goal was rejected")
            result_future = handle.get_result_async()
            rclpy.spin_until_future_complete(node, result_future, timeout_sec=max_duration + 60)
            result = result_future.result().result
            if not result.bag_path:
                raise RuntimeError(f"episode {seed} failed: {result.message}")
            rows.append({"seed": seed, "success": result.success, "steps": result.num_steps, "bag": result.bag_path})
            bar.set_postfix(success=f"{sum(r['success'] for r in rows)}/{len(rows)}")
    finally:
        if teleop is not None:
            teleop.terminate()
            teleop.wait(10)
        supervisor.request_stop("collection finished")
        supervisor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        log.close()
    return rows
