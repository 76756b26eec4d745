"""Camera calibration in bags -> index.json, and Prophet clips / replay episodes from bags2dataset directories."""

import json

import numpy as np
import pytest
import torch

from prophrl_data.bag_reader import open_bag
from prophrl_data.bag_writer import BagWriter
from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration, EndEffectorPose
from prophrl_worldmodel.action_frames import integrate_actions
from prophrl_worldmodel.clips import (ClipSampler, action_chunk, load_episodes, replay_chunks, replay_episode,
                                      split_episodes)
from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_data.conversion import bags2dataset
from prophrl_data.shards import episode_calibration

SIZE = 32
CONFIG = get_prophet_config("tiny", image_size=SIZE)          # F=4, apf=5, horizon 20, history 8
APF, F, L, HORIZON = CONFIG.actions_per_frame, CONFIG.frames_per_clip, CONFIG.history_length, CONFIG.action_horizon
# A camera 1.5 m above (0.5, 0, 0) looking straight down (optical z = -world z, x = world x).
LOOK_DOWN = np.array([[1, 0, 0, -0.5], [0, -1, 0, 0], [0, 0, -1, 1.5], [0, 0, 0, 1]], float)
CAMERA = {"k": [40.0, 0, 15.5, 0, 40.0, 15.5, 0, 0, 1], "width": SIZE, "height": SIZE,
          "world_to_camera": LOOK_DOWN.reshape(-1).tolist()}


def write_dataset(root, lengths, cameras=None, action_space="ee_delta_7d", size=SIZE):
    """Episode e has len lengths[e]; frame i is red = i, green = 10 e; actions[i] = (1e-3 i, -1e-3 i, 0, 0, 0, 0,
    i % 2); the ee starts at (0.5, 0, 0.2) and follows the actions."""
    (root / "shards").mkdir(parents=True)
    entries = []
    for e, n in enumerate(lengths):
        frames = np.zeros((n, size, size, 3), np.uint8)
        frames[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]
        frames[..., 1] = 10 * e
        actions = np.zeros((n, 7), np.float32)
        actions[:, 0], actions[:, 1], actions[:, 6] = 1e-3 * np.arange(n), -1e-3 * np.arange(n), np.arange(n) % 2
        ee = np.tile(np.array([0.5, 0.0, 0.2, 0, 0, 0, 1], np.float32), (n, 1))
        ee[1:, :3] += np.cumsum(actions[:-1, :3], axis=0)
        shard = f"shards/episode_{e:06d}.npz"
        np.savez(root / shard, frames=frames, ee_pose=ee, actions=actions)
        entries.append({"shard": shard, "episode_id": f"ep{e}", "task": "lift", "instruction": "lift", "success": True,
                        "num_samples": n, "camera": (cameras[e] if cameras else CAMERA)})
    (root / "index.json").write_text(json.dumps({
        "format": "prophrl-samples-v1", "robot": "panda_sim", "action_space": action_space, "action_dim": 7,
        "horizon": 8, "control_period_s": 0.05, "image_shape": [size, size, 3], "episodes": entries}))
    return root


# ----- calibration in bags ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """One scripted Panda lift episode (frontview, 64 px) recorded by the episode bag writer, and the sim's camera."""
    from prophrl_trainer.collect import CollectSettings, collect_direct
    from prophrl_sim.arm_sim import ArmSim

    root = tmp_path_factory.mktemp("collected")
    collect_direct(CollectSettings(robot="panda_sim", task="lift", episodes=1, max_steps=40, camera="frontview",
                                   image_size=64), root / "bags", show_progress=False)
    with ArmSim("panda_sim", "lift", camera="frontview", image_width=64, image_height=64) as sim:
        sim.reset(0)
        camera = sim.camera_model()
    return root, camera


def test_collected_bag_stores_the_camera_calibration(collected):
    root, camera = collected
    bag = next((root / "bags").iterdir())
    assert "/camera/pose" in open_bag(bag).topics
    bags2dataset([root / "bags"], root / "dataset", "panda_sim")
    index = json.loads((root / "dataset" / "index.json").read_text())
    entry = index["episodes"][0]
    assert entry["camera"]["k"] == pytest.approx(camera.k)
    assert (entry["camera"]["width"], entry["camera"]["height"]) == (64, 64)
    calibration = episode_calibration(entry)
    assert isinstance(calibration, CameraCalibration)
    # world_to_camera inverts the recorded optical-frame pose: the camera centre maps to the origin
    camera_centre = np.append(camera.pose.position, 1.0)
    np.testing.assert_allclose(calibration.world_to_camera_matrix @ camera_centre, [0, 0, 0, 1], atol=1e-6)
    # every recorded end-effector position is in front of the camera and inside the image
    with np.load(root / "dataset" / entry["shard"], allow_pickle=False) as shard:
        pixels, depth = calibration.project(shard["ee_pose"][:, :3])
    assert (depth > 0.3).all()
    assert ((pixels >= 0) & (pixels < 64)).all()


def test_bag_without_camera_pose_converts_with_null_camera(collected, tmp_path):
    root, _ = collected
    source = open_bag(next((root / "bags").iterdir()))
    writer = BagWriter(tmp_path / "old_bag", source.custom_data)   # an old recording: no /camera/pose
    for topic, info in source.topics.items():
        if topic != "/camera/pose":
            writer.add_topic(topic, info.msgtype)
    for message in source.messages():
        if message.topic != "/camera/pose":
            writer.write(message.topic, message.data, message.log_time_ns, message.publish_time_ns)
    writer.close()
    bags2dataset([tmp_path / "old_bag"], tmp_path / "dataset", "panda_sim")
    entry = json.loads((tmp_path / "dataset" / "index.json").read_text())["episodes"][0]
    assert entry["camera"] is None
    assert episode_calibration(entry) is None
    sampler = ClipSampler(load_episodes(tmp_path / "dataset", SIZE), CONFIG)
    sample = sampler.sample(0)
    assert not sample["calibrated"] and not sample["action_frames"].any()


def test_malformed_camera_entry_is_a_config_error():
    with pytest.raises(ConfigError, match="episode ep0: malformed camera entry"):
        episode_calibration({"episode_id": "ep0", "camera": {"k": [1, 0, 0]}})
    with pytest.raises(ConfigError, match="rigid"):
        episode_calibration({"episode_id": "ep0", "camera": {**CAMERA, "world_to_camera": [2.0] * 16}})


# ----- clips -----------------------------------------------------------------------------------------------
def test_clips_align_history_current_actions_and_future(tmp_path):
    lengths = [30, 21, 12]  # the last is too short for a clip (needs F * apf + 1 = 21 steps)
    episodes = load_episodes(write_dataset(tmp_path / "d", lengths), SIZE)
    sampler = ClipSampler(episodes, CONFIG)
    assert len(sampler) == (30 - 20) + (21 - 20)
    for clip, (episode, start) in [(0, (0, 0)), (7, (0, 7)), (9, (0, 9)), (10, (1, 0))]:
        sample = sampler.sample(clip)
        red = lambda frames: frames[..., 0].reshape(len(frames), -1)[:, 0].tolist()  # noqa: E731
        assert sample["current_frame"][0, 0, 0] == start and sample["current_frame"][0, 0, 1] == 10 * episode
        assert red(sample["history_frames"]) == [max(start - APF * k, 0) for k in range(L, 0, -1)]
        assert red(sample["future_frames"]) == [start + APF * k for k in range(1, F + 1)]
        np.testing.assert_allclose(sample["actions"][:, 0], 1e-3 * (start + np.arange(HORIZON)), rtol=1e-6)
        assert sample["actions"].shape == (HORIZON, 7)
    batch = sampler.batch([0, 5, 10])
    assert batch["history_frames"].shape == (3, L, SIZE, SIZE, 3) and batch["future_frames"].shape == (3, F, SIZE,
                                                                                                      SIZE, 3)
    assert batch["current_frame"].dtype == batch["action_frames"].dtype == torch.uint8
    assert batch["calibrated"].tolist() == [True, True, True]


def test_action_chunk_pads_with_zero_motion_and_held_gripper():
    actions = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    chunk = action_chunk(actions, 3, 6)
    np.testing.assert_array_equal(chunk[:2], actions[3:5])
    np.testing.assert_array_equal(chunk[2:, :6], 0)
    np.testing.assert_array_equal(chunk[2:, 6], actions[-1, 6])
    with pytest.raises(ValueError, match="outside"):
        action_chunk(actions, 5, 6)


def test_kept_action_frames_give_the_same_batches_within_their_budget_and_stay_read_only(tmp_path):
    episodes = load_episodes(write_dataset(tmp_path / "d", [30, 30], cameras=[CAMERA, CAMERA]), SIZE)
    fresh = ClipSampler(episodes, CONFIG, action_frame_cache_bytes=0)
    clip_bytes = F * SIZE * SIZE * 3
    kept = ClipSampler(episodes, CONFIG, action_frame_cache_bytes=3 * clip_bytes)
    indices = [0, 5, 5, -1, 7, 0, 9]
    for _ in range(2):
        first, second = fresh.batch(indices), kept.batch(indices)
        for key in first:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert len(fresh._action_frame_cache) == 0 and sorted(kept._action_frame_cache) == [0, 5, len(kept) - 1]
    assert kept.sample(len(kept) - 1)["action_frames"] is kept.sample(-1)["action_frames"]  # one clip, one key
    frames = kept.sample(5)["action_frames"]
    with pytest.raises(ValueError, match="read-only"):
        frames[0, 0, 0, 0] = 255
    assert fresh.sample(7)["action_frames"].flags.writeable


def test_action_frames_draw_the_integrated_pose_and_black_without_calibration(tmp_path):
    episodes = load_episodes(write_dataset(tmp_path / "d", [30, 30], cameras=[CAMERA, None]), SIZE)
    sampler = ClipSampler(episodes, CONFIG)
    calibrated, uncalibrated = sampler.sample(4), sampler.sample(len(sampler) - 1)
    assert calibrated["calibrated"] and not uncalibrated["calibrated"]
    assert not uncalibrated["action_frames"].any()
    frames = calibrated["action_frames"]
    assert frames.shape == (F, SIZE, SIZE, 3)
    ee = episodes[0].ee_pose[4]
    poses = integrate_actions([EndEffectorPose.from_quaternion(ee[:3], ee[3:], 0)], calibrated["actions"], APF)
    calibration = episodes[0].calibration
    for frame, (pose,) in zip(frames, poses):
        ((u, v),), _ = calibration.project([pose.position])
        assert frame[int(round(v)), int(round(u))].any()      # the disk sits on the projected position
        assert frame.any(axis=-1).mean() < 0.5                  # and the rest is background


def test_replay_episode_cuts_whole_chunks_and_matches_real_frames(tmp_path):
    episodes = load_episodes(write_dataset(tmp_path / "d", [70]), SIZE)
    episode = episodes[0]
    assert replay_chunks(episode, CONFIG) == 3        # 69 steps after frame 0 hold 3 chunks of 20
    replay = replay_episode(episode, CONFIG, chunks=5)
    assert replay.action_chunks.shape == (3, HORIZON, 7)
    np.testing.assert_allclose(replay.action_chunks.reshape(-1, 7)[:, 0], 1e-3 * np.arange(60), rtol=1e-6)
    assert replay.real_frames[:, 0, 0, 0].tolist() == [APF * k for k in range(1, 13)]
    assert replay.start_frame[0, 0, 0] == 0 and (replay.history_frames == replay.start_frame).all()
    assert replay.action_frames.shape == (3, F, SIZE, SIZE, 3) and replay.calibrated
    assert replay.frame_period_s == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="no whole action chunk"):
        replay_episode(load_episodes(write_dataset(tmp_path / "short", [20]), SIZE)[0], CONFIG)


def test_split_is_deterministic_and_independent_of_order(tmp_path):
    episodes = load_episodes(write_dataset(tmp_path / "d", [22] * 10), SIZE)
    train, held = split_episodes(episodes, 0.2)
    assert len(held) == 2 and len(train) == 8
    _, held_reversed = split_episodes(list(reversed(episodes)), 0.2)
    assert {e.episode_id for e in held} == {e.episode_id for e in held_reversed}
    assert split_episodes(episodes[:1], 0.2) == (episodes[:1], [])


def test_clip_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_episodes(tmp_path / "missing", SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a bags2dataset output"):
        load_episodes(tmp_path / "empty", SIZE)
    with pytest.raises(ConfigError, match="ee_delta_7d"):
        load_episodes(write_dataset(tmp_path / "joints", [25], action_space="joint_position"), SIZE)
    with pytest.raises(ConfigError, match="21 control steps"):
        ClipSampler(load_episodes(write_dataset(tmp_path / "short", [20, 15]), SIZE), CONFIG)
    with pytest.raises(ConfigError, match="load the episodes at that image size"):
        ClipSampler(load_episodes(write_dataset(tmp_path / "ok", [25]), 16), CONFIG)
    broken = write_dataset(tmp_path / "broken", [25])
    np.savez(broken / "shards" / "episode_000000.npz", frames=np.zeros((25, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="episode_000000.npz"):
        load_episodes(broken, SIZE)
