"""The trainer node driving two real imagination servers over DDS (sessions, one chunk per goal, groups
round-robin), rewarded by the real judge node (ScoreRollout), pushing every checkpoint to the real policy
node's LoadPolicy, publishing progress; and the same training in process (Prophet and judge in this
process) gives the same rewards and weights: the servers run the same models with the same seeds on one
CPU thread, and rgb8 frames / float32 states cross DDS unchanged, so the imagined rollouts are identical;
only the judge's float rounding differs (~1e-6: the node scores one clip per request, the in-process judge
a batch of clips, and CPU kernels round differently per batch size)."""

import json
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from prophrl_common.testing import node_process, python_module_argv, spin_until
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer
from prophrl_trainer.trainer_node import TrainerNode

SERVERS = ("/prophrl/imagination/imagine", "/prophrl/imagination_b/imagine")
PROGRESS = "/prophrl/training/progress"
UPDATES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_smoke_setup(tmp_path_factory.mktemp("trainer_node_setup"))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random-initialised video success classifier (a real judge, untrained)."""
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.modeling_judge import RewardJudge

    torch.manual_seed(1)
    judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32,
                                         num_frames=4, dropout=0.0))
    return judge.save_pretrained(tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    node = Node("trainer_node_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _diagnostics(messages, name):
    for msg in reversed(messages):
        for status in msg.status:
            if status.name.startswith(name):
                return {kv.key: kv.value for kv in status.values}
    return None


def _closed_all(messages, name):
    """The server's diagnostics report every session closed (they arrive every 0.2 s)."""
    stats = _diagnostics(messages, name)
    return (stats is not None and int(stats["sessions_opened"]) > 0
            and stats["sessions_opened"] == stats["sessions_closed"])


def _wait_for(predicate, timeout):
    """Poll while the executor thread spins."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


@pytest.mark.slow
def test_trainer_node_trains_through_imagination_servers_and_pushes_policies(setup, judge_dir, ros, tmp_path):
    from rclpy.action import ActionClient

    from prophrl_msgs.action import Imagine
    from prophrl_msgs.srv import LoadPolicy, ScoreRollout

    config = setup.rl_config("node.json", states_per_update=3, checkpoint_every=1, keep_checkpoints=2)
    servers = [python_module_argv("prophrl_worldmodel.imagination_node", "-r", f"__node:=imagination_{i}",
                                  "-p", f"checkpoint_path:={setup.prophet}", "-p", "diagnostics_period_s:=0.2",
                                  "-r", f"~/imagine:={name}") for i, name in enumerate(SERVERS)]
    policy = python_module_argv("prophrl_policy.policy_node", "-p", f"checkpoint_path:={setup.policy}")
    judge = python_module_argv("prophrl_worldmodel.judge_node", "-p", f"judge_path:={judge_dir}")
    diagnostics, progress = [], []
    ros.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    ros.create_subscription(String, PROGRESS, lambda m: progress.append(json.loads(m.data)),
                            QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    with node_process(servers[0]) as a, node_process(servers[1]) as b, node_process(policy) as policy_proc, \
            node_process(judge) as judge_proc:
        clients = [ActionClient(ros, Imagine, name) for name in SERVERS]
        load = ros.create_client(LoadPolicy, "/policy_node/load_policy")
        score = ros.create_client(ScoreRollout, "/prophrl/judge/score_rollout")
        assert spin_until(ros, lambda: all(c.server_is_ready() for c in clients) and load.service_is_ready()
                          and score.service_is_ready(), 90), \
            a.output() + b.output() + policy_proc.output() + judge_proc.output()
        run = tmp_path / "run"
        node = TrainerNode(parameter_overrides=[
            Parameter("policy_checkpoint", value=str(setup.policy)),
            Parameter("dataset_dirs", value=[str(setup.data)]),
            Parameter("out_dir", value=str(run)), Parameter("updates", value=UPDATES),
            Parameter("rl_config", value=str(config)),
            Parameter("imagination_actions", value=list(SERVERS)),
            Parameter("progress_topic", value=PROGRESS),
            # a lost goal or response fails the run, naming what it waited for, before the wait below ends
            Parameter("goal_timeout_s", value=120.0)])
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.add_node(ros)
        spinning = threading.Thread(target=executor.spin, daemon=True)
        spinning.start()
        try:
            node.start()
            assert node.done.wait(240), f"training did not finish: {node.status}\n" + a.output() + b.output()
            assert _wait_for(lambda: len(progress) >= UPDATES and
                             all(_closed_all(diagnostics, f"imagination_{i}:") for i in (0, 1)), 10)
        finally:
            executor.shutdown()
            spinning.join(5)
            for client in clients:
                client.destroy()
            ros.destroy_client(load)
            ros.destroy_client(score)
            node.destroy_node()
        assert node.exit_code == 0, f"{node.status}\n" + a.output() + b.output() + judge_proc.output()
        trainer = node.trainer
        # progress, checkpoints, and every checkpoint's policy hot-swapped into the real policy node
        assert [m["update"] for m in progress][-UPDATES:] == list(range(1, UPDATES + 1))
        assert node.counters["checkpoints"] == UPDATES
        assert node.counters["policy_pushes"] == UPDATES and node.counters["policy_push_failures"] == 0
        log = policy_proc.output()
        for update in range(1, UPDATES + 1):
            assert f"serving policy version {update} from {run}" in log, log[-2000:]
        # groups spread round-robin over both servers; every session opened was closed
        backend_goals = trainer.backend.goals_sent
        assert min(backend_goals) > 0, backend_goals
        opened = 0
        for i in (0, 1):
            stats = _diagnostics(diagnostics, f"imagination_{i}:")
            assert stats["sessions_opened"] == stats["sessions_closed"] and int(stats["open_sessions"]) == 0, stats
            assert int(stats["imagine_failed"]) == 0
            opened += int(stats["sessions_opened"])
        assert opened == UPDATES * 3
        assert trainer.scorer.requests_sent > 0 and "rejected" not in judge_proc.output()

    # the same training in process: the same Prophet with the same seeds imagines the same rollouts
    args = build_parser().parse_args(setup.argv(tmp_path / "in_process", UPDATES, config, judge=judge_dir))
    local, _ = build_trainer(TrainSettings.from_args(args), show_progress=False)
    local.run(UPDATES)
    np.testing.assert_allclose([m["rollout/reward_mean"] for m in local.history],
                               [m["rollout/reward_mean"] for m in trainer.history], rtol=1e-5, atol=1e-6)
    remote = ckpt.latest_checkpoint(run / "checkpoints")
    from prophrl_policy.modeling_vla import VLAPolicy

    remote_state = VLAPolicy.from_pretrained(remote / ckpt.POLICY_DIR).state_dict()
    sft_state = VLAPolicy.from_pretrained(setup.policy).state_dict()
    local_state = local.policy.state_dict()
    # Adam turns the judge's ~1e-6 rounding into ~1e-4 steps on parameters whose true gradient is ~0 (e.g.
    # attention key biases), so compare the runs in norm, against how far training moved the weights
    flat = (lambda state: torch.cat([v.flatten().double() for v in state.values()]))  # noqa: E731
    moved = (flat(local_state) - flat(sft_state)).norm()
    apart = (flat(local_state) - flat(remote_state)).norm()
    assert moved > 0 and apart < 1e-2 * moved, (float(apart), float(moved))
