"""Trainer node: FA-GRPO + FlowScale in imagination, over ROS (a thin adapter around rl_trainer.Trainer).

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

import dataclasses
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
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.startup import startup_timeout_s
from prophrl_msgs.srv import LoadPolicy
from prophrl_policy.configuration_vla import VLAConfig
from prophrl_trainer.train_cli import TrainSettings, build_trainer
from prophrl_trainer.ros_backends import ImagineClientBackend, RemoteError, ScoreRolloutClient

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclasses.dataclass(frozen=True)
class TrainerNodeParameters:
    policy_checkpoint: str = parameter("", "SFT policy checkpoint to start from (`prophrl policy sft`); its horizon "
                                           "must equal the world model's action_horizon", required=True)
    dataset_dirs: tuple[str, ...] = parameter((), "bags2dataset directories: each episode's first frame, "
                                                  "instruction and ee pose is an initial state", required=True)
    out_dir: str = parameter("", "run directory: checkpoints/, tensorboard/, progress.jsonl", required=True)
    updates: int = parameter(0, "total updates (0: the RL config's `updates`)", minimum=0)
    rl_config: str = parameter("", "RL config JSON (RLConfig fields); empty or builtin: the built-in defaults")
    resume: bool = parameter(False, "continue the newest checkpoint in out_dir (otherwise a run directory with "
                                    "checkpoints is refused)")
    device: str = parameter("cpu", "torch device of the policy update")
    torch_threads: int = parameter(1, "intra-op CPU threads", minimum=1)
    imagination_actions: tuple[str, ...] = parameter(("/prophrl/imagination/imagine",),
                                                     "Imagine action servers (imagination_node); groups are spread "
                                                     "round-robin", required=True)
    max_goals_in_flight: int = parameter(2, "goals in flight per server; keep it <= the server's max_queued_goals "
                                            "+ 1 (it answers busy beyond)", minimum=1)
    goal_timeout_s: float = parameter(600.0, "time limit of one Imagine goal / ScoreRollout call", minimum=0.0,
                                      exclusive_minimum=True)
    server_wait_s: float = parameter(0.0, "how long to wait at start-up for the servers and the judge; 0: the "
                                          "start-up timeout every client waits (PROPHRL_STARTUP_TIMEOUT_S)",
                                     minimum=0.0)
    control_period_s: float = parameter(0.05, "control_period_s written into the ActionChunks sent (the world "
                                              "model ignores timing)", minimum=0.0, exclusive_minimum=True)
    score_service: str = parameter("/prophrl/judge/score_rollout", "the judge's ScoreRollout service; empty: an "
                                                                   "in-process judge from judge_checkpoint")
    judge_checkpoint: str = parameter("", "in-process judge (`prophrl judge train` directory) when score_service is "
                                          "empty")
    test_reward: str = parameter("", "the programmatic end-effector test reward (tests only)")
    load_policy_service: str = parameter("/policy_node/load_policy", "every checkpoint's policy is pushed here "
                                                                     "(LoadPolicy); empty: no push")
    load_policy_timeout_s: float = parameter(30.0, "time limit of one LoadPolicy call", minimum=0.0,
                                             exclusive_minimum=True)
    progress_topic: str = parameter("/prophrl/training/progress", "one JSON line of metrics per update "
                                                                  "(std_msgs/String, latched)", required=True)
    exit_when_done: bool = parameter(True, "exit when training ends (0: every update done, 1: an error)")


class TrainerNode(Node):
    def __init__(self, node_name: str = "trainer_node", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        declare_parameters(self, TrainerNodeParameters)
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
        """The parameter's current value (the worker thread reads them all, validated, when it starts)."""
        return self.get_parameter(name).value

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """The node is going away (Ctrl-C, SIGTERM): the worker thread, which may be waiting on the
        servers or in an update, ends without a word once its ROS calls fail; a checkpoint it is
        writing stays whole (atomic writes)."""
        self.stopping.set()

    # ----- the worker thread ---------------------------------------------------------------------
    @staticmethod
    def _settings(params: TrainerNodeParameters) -> TrainSettings:
        return TrainSettings(policy=params.policy_checkpoint, data=tuple(d for d in params.dataset_dirs if d),
                             out=params.out_dir, judges=(params.judge_checkpoint,) if params.judge_checkpoint else (),
                             test_reward=params.test_reward,
                             updates=params.updates, config="" if params.rl_config == "builtin" else params.rl_config,
                             resume=params.resume, device=params.device)

    def _train(self) -> None:
        try:
            params = read_parameters(self, TrainerNodeParameters)
            torch.set_num_threads(params.torch_threads)
            settings = self._settings(params)
            server_wait_s = params.server_wait_s or startup_timeout_s()
            policy_config = VLAConfig.from_json_file(f"{settings.policy}/config.json")
            backend = ImagineClientBackend(
                self, list(params.imagination_actions), policy_config.horizon,
                control_period_s=params.control_period_s,
                goal_timeout_s=params.goal_timeout_s, max_in_flight=params.max_goals_in_flight)
            self.status = "waiting for the imagination server(s)"
            backend.wait_for_servers(server_wait_s)
            scorer = None
            if params.score_service and not (settings.judges or settings.test_reward):
                scorer = ScoreRolloutClient(self, params.score_service, timeout_s=params.goal_timeout_s)
                self.status = "waiting for the judge"
                scorer.wait_for_service(server_wait_s)
            elif not (settings.judges or settings.test_reward):
                raise ConfigError("set score_service (the judge node), judge_checkpoint or test_reward")
            trainer, updates = build_trainer(settings, show_progress=False, on_checkpoint=self._push_policy,
                                             on_update=self._on_update, backend=backend, scorer=scorer)
            backend.num_steps = trainer.config.imagination_steps   # Euler steps per clip, as in process
            self.trainer = trainer
            self.status = "training"
            self.get_logger().info(f"training {settings.policy} for {updates} updates (from update {trainer.update}) "
                                   f"over {list(params.imagination_actions)}; run directory {settings.out}")
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
