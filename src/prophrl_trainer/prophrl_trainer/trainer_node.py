"""Trainer node: FA-GRPO + FlowScale in imagination, over ROS (a thin adapter around imagination_rl.Trainer).

The Trainer runs in a worker thread with ros_backends' clients: rollouts through the Imagine action
server(s) in `imagination_actions` (groups spread round-robin over them), rewards from the ScoreRollout
service `score_service` (or, with `score_service` empty, an in-process judge from `judge_checkpoint`;
`test_reward` names the programmatic end-effector test reward, for tests only). Each checkpoint's policy
is pushed to the policy node's LoadPolicy service `load_policy_service` (policy_version = the update
count; empty: no push; a missing or failing service is logged, training goes on). Progress: one JSON
line per update on `progress_topic` (std_msgs/String) and a /diagnostics status. When training ends
the node exits (0 when every update finished, 1 on an error) unless `exit_when_done` is false.

Run: ros2 run prophrl_trainer trainer_node --ros-args --params-file config/nodes/trainer_node.yaml
  -p policy_checkpoint:=checkpoints/sft -p dataset_dirs:="[data/dataset]" -p out_dir:=runs/rl
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from prophrl_common.config_io import ConfigError
from prophrl_common.node_runtime import run_node
from prophrl_common.startup import startup_timeout_s
from prophrl_msgs.srv import LoadPolicy
from prophrl_policy.configuration_vla import VLAConfig
from prophrl_trainer.imagination_rl import build_trainer
from prophrl_trainer.ros_backends import ImagineClientBackend, RemoteError, ScoreRolloutClient

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TrainerNode(Node):
    def __init__(self, node_name: str = "trainer_node", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        for name, default in (
                ("policy_checkpoint", ""), ("dataset_dirs", [""]), ("out_dir", ""), ("updates", 0),
                ("rl_config", ""), ("resume", False), ("device", "cpu"), ("torch_threads", 1),
                ("imagination_actions", ["/prophrl/imagination/imagine"]),
                ("max_goals_in_flight", 2), ("goal_timeout_s", 600.0), ("server_wait_s", startup_timeout_s()),
                ("control_period_s", 0.05),
                ("score_service", "/prophrl/judge/score_rollout"), ("judge_checkpoint", ""), ("test_reward", ""),
                ("load_policy_service", "/policy_node/load_policy"), ("load_policy_timeout_s", 30.0),
                ("progress_topic", "/prophrl/training/progress"), ("exit_when_done", True)):
            self.declare_parameter(name, default)
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.exit_code = 0
        self.status = "starting"
        self.counters = {"updates": 0, "checkpoints": 0, "policy_pushes": 0, "policy_push_failures": 0}
        self.last_metrics: dict = {}
        self.last_checkpoint = ""
        self.trainer = None
        self._progress_pub = self.create_publisher(String, self.p("progress_topic"), LATCHED)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._load_client = None
        if self.p("load_policy_service"):
            self._load_client = self.create_client(LoadPolicy, self.p("load_policy_service"),
                                                   callback_group=ReentrantCallbackGroup())
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._train, name="trainer", daemon=True)

    def p(self, name: str):
        return self.get_parameter(name).value

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """The node is going away (Ctrl-C, SIGTERM): the worker thread, which may be waiting on the
        servers or in an update, ends without a word once its ROS calls fail; a checkpoint it is
        writing stays whole (atomic writes)."""
        self.stopping.set()

    # ----- the worker thread ---------------------------------------------------------------------
    def _args(self) -> argparse.Namespace:
        for name in ("policy_checkpoint", "out_dir"):
            if not self.p(name):
                raise ConfigError(f"parameter {name} is required")
        data = [d for d in self.p("dataset_dirs") if d]
        if not data:
            raise ConfigError("parameter dataset_dirs needs at least one bags2dataset directory")
        return argparse.Namespace(policy=self.p("policy_checkpoint"), world_model="(imagination servers)",
                                  judge=self.p("judge_checkpoint") or None, test_reward=self.p("test_reward") or None,
                                  test_reward_scale=0.02, data=data, out=self.p("out_dir"), updates=self.p("updates"),
                                  config="" if self.p("rl_config") in ("", "builtin") else self.p("rl_config"),
                                  resume=bool(self.p("resume")), device=self.p("device"))

    def _train(self) -> None:
        try:
            torch.set_num_threads(max(1, int(self.p("torch_threads"))))
            args = self._args()
            policy_config = VLAConfig.from_json_file(f"{args.policy}/config.json")
            backend = ImagineClientBackend(
                self, list(self.p("imagination_actions")), policy_config.horizon,
                control_period_s=self.p("control_period_s"),
                goal_timeout_s=self.p("goal_timeout_s"), max_in_flight=self.p("max_goals_in_flight"))
            self.status = "waiting for the imagination server(s)"
            backend.wait_for_servers(self.p("server_wait_s"))
            scorer = None
            if self.p("score_service") and not (args.judge or args.test_reward):
                scorer = ScoreRolloutClient(self, self.p("score_service"), timeout_s=self.p("goal_timeout_s"))
                self.status = "waiting for the judge"
                scorer.wait_for_service(self.p("server_wait_s"))
            elif not (args.judge or args.test_reward):
                raise ConfigError("set score_service (the judge node), judge_checkpoint or test_reward")
            trainer, updates = build_trainer(args, show_progress=False, on_checkpoint=self._push_policy,
                                             on_update=self._on_update, backend=backend, scorer=scorer)
            backend.num_steps = trainer.config.imagination_steps   # Euler steps per clip, as in process
            self.trainer = trainer
            self.status = "training"
            self.get_logger().info(f"training {args.policy} for {updates} updates (from update {trainer.update}) "
                                   f"over {self.p('imagination_actions')}; run directory {args.out}")
            trainer.run(updates)
            self.status = f"done: {trainer.update} updates"
            self.get_logger().info(f"training finished: {trainer.update} updates, last checkpoint "
                                   f"{trainer.last_checkpoint}")
        except Exception as exc:  # noqa: BLE001 - report, exit non-zero
            if self.stopping.is_set():
                self.status = "stopped"
            elif isinstance(exc, (ConfigError, RemoteError)):
                self.status, self.exit_code = f"failed: {exc}", 1
                self.get_logger().error(f"training failed: {exc}")
            else:
                self.status, self.exit_code = f"failed: {type(exc).__name__}: {exc}", 1
                self.get_logger().error(f"training failed:\n{traceback.format_exc()}")
        finally:
            if not self.stopping.is_set():
                self._publish_diagnostics()
            self.done.set()

    def _on_update(self, metrics: dict) -> None:
        self.counters["updates"] = int(metrics["update"])
        self.last_metrics = metrics
        self._progress_pub.publish(String(data=json.dumps(metrics)))

    def _push_policy(self, policy_dir, update: int) -> None:
        """on_checkpoint: hot-swap the policy node's weights (LoadPolicy)."""
        self.counters["checkpoints"] += 1
        self.last_checkpoint = str(policy_dir)
        if self._load_client is None:
            return
        name = self.p("load_policy_service")
        if not self._load_client.wait_for_service(timeout_sec=1.0):
            self.counters["policy_push_failures"] += 1
            self.get_logger().warning(f"LoadPolicy {name} is not available: policy version {update} not pushed",
                                      throttle_duration_sec=60.0)
            return
        done = threading.Event()
        future = self._load_client.call_async(LoadPolicy.Request(checkpoint_path=str(policy_dir),
                                                                 policy_version=int(update)))
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(self.p("load_policy_timeout_s")) or future.result() is None or not future.result().success:
            self.counters["policy_push_failures"] += 1
            reason = future.result().message if future.done() and future.result() is not None else "no answer"
            self.get_logger().warning(f"LoadPolicy {name} refused policy version {update}: {reason}")
            return
        self.counters["policy_pushes"] += 1
        self.get_logger().info(f"pushed policy version {update} to {name}")

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.ERROR if self.status.startswith("failed") else DiagnosticStatus.OK
        status = DiagnosticStatus(name=f"{self.get_name()}: training", level=level, message=self.status[:200],
                                  hardware_id=str(self.p("out_dir")))
        values = {**self.counters, "last_checkpoint": self.last_checkpoint,
                  **{k: f"{v:.4g}" for k, v in self.last_metrics.items()
                     if k.startswith(("rollout/", "eval/")) or k in ("train/clip_fraction", "train/kl")}}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _started(node: TrainerNode) -> TrainerNode:
    node.start()
    return node


def main(args: list[str] | None = None) -> int:
    return run_node(lambda: _started(TrainerNode()), args, executor=lambda _node: MultiThreadedExecutor(num_threads=4),
                    keep_running=lambda node: not (node.p("exit_when_done") and node.done.is_set()),
                    before_destroy=TrainerNode.stop, exit_code=lambda node: node.exit_code)


if __name__ == "__main__":
    sys.exit(main())
