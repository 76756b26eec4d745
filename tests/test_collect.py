"""Demonstration collection end to end: sim + executor (safety filter) + scripted expert + recorder
+ CollectEpisode over DDS, one rosbag2 bag per episode, then bags2dataset on what was recorded."""

import json
import subprocess
import sys

import numpy as np
import pytest

from prophrl_data.bag_reader import open_bag
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import decode_bag_with_third_party_readers
from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_data.episode_bags import EpisodeBagRecorder
from prophrl_trainer.sim_rollout import ExpertController, run_episode
from prophrl_data.alignment import load_episode
from prophrl_data.conversion import bags2dataset

EPISODES = 10


@pytest.mark.slow
@pytest.mark.timeout(600)   # 60-120 s on a loaded 2-core machine
@pytest.mark.parametrize("robot", ["panda_sim", "ur5e_sim"])
def test_scripted_lift_over_dds_succeeds_and_records_every_episode(robot, tmp_path):
    out = tmp_path / "bags"
    result = subprocess.run([sys.executable, "-m", "prophrl.cli", "collect", "--robot", robot, "--task", "lift",
                             "--episodes", str(EPISODES), "--seed", "1000", "--out", str(out)],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bags = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(bags) == EPISODES, result.stdout
    successes = [open_bag(b).custom_data.get("success") == "true" for b in bags]
    print(f"{robot}: scripted lift over DDS {sum(successes)}/{EPISODES}")
    assert sum(successes) >= 0.8 * EPISODES, result.stdout
    for bag in bags:  # every recorded episode is a complete, aligned training episode
        episode = load_episode(bag, load_robot_config(robot))
        assert len(episode) > 10 and episode.action_chunks.shape[2] == 7
        assert episode.frames.shape[1:] == (128, 128, 3) and episode.instruction.startswith("lift the")
    summary = bags2dataset([out], tmp_path / "dataset", robot)
    assert summary.episodes == EPISODES


def test_direct_collection_writes_the_recorder_layout(tmp_path):
    rows = collect_direct(CollectSettings(robot="panda_sim", task="lift", episodes=1, first_seed=7, max_steps=150),
                          tmp_path / "bags", show_progress=False)
    assert rows[0]["success"], rows
    bag = open_bag(rows[0]["bag"])
    assert {t for t in bag.topics} >= {"/camera/image_raw", "/camera/camera_info", "/joint_states", "/prophrl/ee_pose",
                                       "/prophrl/action_chunk", "/prophrl/instruction", "/prophrl/episode"}
    assert bag.custom_data["success"] == "true" and bag.custom_data["robot"] == "panda_sim"
    counts = decode_bag_with_third_party_readers(rows[0]["bag"])  # every topic, strictly, by rosbags and mcap-ros2
    assert counts == {topic: info.message_count for topic, info in bag.topics.items()}
    episode = load_episode(rows[0]["bag"], load_robot_config("panda_sim"))
    # one frame per control step, each with the chunk row due at that step
    assert abs(episode.camera_rate_hz - 20.0) < 0.5
    assert np.isfinite(episode.actions).all() and episode.actions.shape == (len(episode), 7)
    assert episode.actions[-1, 6] > 0.5, "the lift ends with the gripper closed"


def test_exported_actions_are_the_chunk_rows_the_sim_executed(tmp_path):
    """One frame per control step: the action exported for each frame is exactly the chunk row the sim
    stepped with at that frame (before the safety filter), including one control period after a chunk."""
    from prophrl_sim.arm_sim import ArmSim

    sim = ArmSim("panda_sim", "lift", image_width=64, image_height=64)
    executed = []
    recorder = None

    def record(step):
        nonlocal recorder
        if recorder is None:
            recorder = EpisodeBagRecorder(tmp_path / "bag", sim, "lift", 3)
        recorder(step)
        executed.append(step.commanded_action.copy())

    try:
        expert = ExpertController("lift", sim.control_period_s)
        outcome = run_episode(sim, expert, 3, max_steps=40, replan_steps=3, on_step=record)
        recorder.close(outcome)
    finally:
        sim.close()
    episode = load_episode(tmp_path / "bag", load_robot_config("panda_sim"))
    assert episode.skipped_frames == 0 and len(episode) == len(executed) == 40
    assert episode.chunk_steps.tolist()[:7] == [0, 1, 2, 0, 1, 2, 0]
    mismatched = [i for i, (got, row) in enumerate(zip(episode.actions, executed)) if not np.array_equal(got, row)]
    assert not mismatched, f"frames whose exported action is not the executed row: {mismatched}"
    assert episode.control_period_s == 0.05


def test_live_collection_on_a_slowed_sim_records_exact_rates(tmp_path):
    """The collect profile through its live nodes with the sim held to 0.3x real time (a machine that
    cannot keep up): every node runs on the sim's /clock, so the bag's camera rate is exactly 20 Hz in
    header stamps and (but for a frame the recorder was more than a step late for) receive times, and
    bags2dataset exports it at 20 fps."""
    import io
    import time

    import rclpy
    from rclpy.action import ActionClient
    from rclpy.node import Node

    from prophrl.profiles import load_profile
    from prophrl.up import Supervisor
    from prophrl_msgs.action import CollectEpisode

    out, log = tmp_path / "bags", io.StringIO()
    profile = load_profile("collect", {"robot": "panda_sim", "task": "lift", "out": str(out),
                                       "real_time_factor": "0.3"})
    supervisor = Supervisor(profile, out=log)
    rclpy.init()
    node = Node("slow_collect_client")
    try:
        supervisor.start()
        client = ActionClient(node, CollectEpisode, "/collector/collect_episode")
        assert client.wait_for_server(timeout_sec=120), log.getvalue()[-4000:]
        goal = CollectEpisode.Goal(instruction="", max_duration_s=2.0, task="lift", teleop="scripted", seed=1000)
        began = time.monotonic()
        sent = client.send_goal_async(goal)
        rclpy.spin_until_future_complete(node, sent, timeout_sec=120)
        assert sent.result() is not None and sent.result().accepted, log.getvalue()[-4000:]
        done = sent.result().get_result_async()
        rclpy.spin_until_future_complete(node, done, timeout_sec=300)
        wall_s = time.monotonic() - began
        assert done.result() is not None, log.getvalue()[-4000:]
        result = done.result().result
        assert result.bag_path, f"{result.message}\n{log.getvalue()[-4000:]}"
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        supervisor.request_stop("test finished")
        supervisor.shutdown()

    bag = open_bag(result.bag_path)
    frames = list(bag.messages(["/camera/image_raw"]))
    stamps = np.array([m.publish_time_ns for m in frames])
    receive = np.array([m.log_time_ns for m in frames])
    sim_s = (stamps[-1] - stamps[0]) / 1e9
    assert len(frames) >= 30 and wall_s > sim_s / 0.6, (len(frames), sim_s, wall_s)  # the sim did run slow
    assert set(np.diff(stamps).tolist()) == {50_000_000}, np.unique(np.diff(stamps), return_counts=True)
    # receive times are sim time too: a recorder more than a whole step behind (a very busy machine) logs
    # that frame at the next step, so all but a few are exact
    exact = np.diff(receive) == 50_000_000
    assert exact.mean() >= 0.9 and (receive >= stamps).all(), np.unique(np.diff(receive), return_counts=True)
    episode = load_episode(result.bag_path, load_robot_config("panda_sim"))
    assert episode.camera_rate_hz == 20.0 and len(episode) >= 25
    assert decode_bag_with_third_party_readers(result.bag_path)["/camera/image_raw"] == len(frames)
    summary = bags2dataset([result.bag_path], tmp_path / "dataset", "panda_sim", lerobot=True)
    info = json.loads((summary.lerobot_dir / "meta" / "info.json").read_text())
    assert info["fps"] == 20 and info["total_frames"] == len(episode)
