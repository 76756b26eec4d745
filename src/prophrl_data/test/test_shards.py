"""prophrl_data.shards: what the writer writes (write_shard + write_index) the one reader (EpisodeDataset) returns,
checked, as the one episode record (ShardEpisode), also resized to a model's image size."""

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration
from prophrl_common.robots import load_robot_config
from prophrl_data.samples import DatasetTopics, EpisodeSamples
from prophrl_data.shards import SHARD_ARRAYS, EpisodeDataset, ShardEpisode, write_index, write_shard

ROBOT = load_robot_config("panda_sim")
CAMERA = {"k": [60.0, 0.0, 15.5, 0.0, 60.0, 15.5, 0.0, 0.0, 1.0], "width": 32, "height": 32,
          "world_to_camera": [1.0, 0, 0, 0.1, 0, -1.0, 0, 0.2, 0, 0, -1.0, 1.5, 0, 0, 0, 1.0]}


def _episode(rng, n: int, instruction: str, success, camera=None) -> EpisodeSamples:
    return EpisodeSamples(
        bag_path=Path(f"/bags/{instruction}"), episode_id=f"ep-{instruction}", instruction=instruction, task="lift",
        success=success, recovered=success is None,
        frames=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        frame_times_ns=np.arange(n, dtype=np.int64) * 50_000_000,
        joint_positions=rng.normal(size=(n, ROBOT.num_joints)).astype(np.float32),
        ee_pose=rng.normal(size=(n, 7)).astype(np.float32),
        action_chunks=rng.normal(size=(n, 4, 7)).astype(np.float32),
        chunk_steps=(np.arange(n) % 4).astype(np.int32),
        action_space="ee_delta_7d", control_period_s=0.05, skipped_frames=0, camera=camera)


def _write(root: Path, episodes: list[EpisodeSamples]) -> None:
    (root / "shards").mkdir(parents=True)
    entries = []
    for i, episode in enumerate(episodes):
        shard = f"shards/episode_{i:06d}.npz"
        write_shard(root / shard, episode)
        entries.append({"shard": shard, "bag": str(episode.bag_path), "episode_id": episode.episode_id,
                        "instruction": episode.instruction, "task": episode.task, "success": episode.success,
                        "num_samples": len(episode), "skipped_frames": 0, "recovered": episode.recovered,
                        "camera": episode.camera})
    write_index(root / "index.json", ROBOT, DatasetTopics.for_robot(ROBOT), episodes[0], entries)


def test_the_reader_returns_what_the_writer_wrote(tmp_path):
    rng = np.random.default_rng(0)
    written = [_episode(rng, 6, "lift the cube", True, CAMERA), _episode(rng, 4, "lift it", False),
               _episode(rng, 5, "lift again", None)]
    _write(tmp_path, written)
    dataset = EpisodeDataset(tmp_path, "ee_delta_7d", needed_by="test")
    assert (len(dataset), dataset.robot, dataset.action_space, dataset.control_period_s) == \
        (3, "panda_sim", "ee_delta_7d", 0.05)
    read = list(dataset.episodes())
    assert [episode.position for episode in read] == [0, 1, 2]
    for mine, theirs in zip(read, written):
        assert set(mine.arrays) == set(SHARD_ARRAYS) and len(mine) == len(theirs)
        for name in SHARD_ARRAYS:
            expected = getattr(theirs, name)
            assert mine[name].dtype == expected.dtype and np.array_equal(mine[name], expected), name
        assert (mine.instruction, mine.task, mine.success, mine.entry["episode_id"]) == \
            (theirs.instruction, "lift", theirs.success, theirs.episode_id)
    assert read[0].calibration == CameraCalibration.from_camera_info(
        CAMERA["k"], np.asarray(CAMERA["world_to_camera"]).reshape(4, 4), 32, 32)
    assert read[1].calibration is None
    # only the arrays asked for are read
    assert set(dataset.episode(2, ("frames", "actions")).arrays) == {"frames", "actions"}


def test_outcome_filters_leave_out_unknown_and_failed_episodes(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path, [_episode(rng, 3, "a", True), _episode(rng, 3, "b", False), _episode(rng, 3, "c", None)])
    dataset = EpisodeDataset(tmp_path)
    with pytest.warns(UserWarning, match=r"SFT leaves out 1 episode\(s\) whose outcome is unknown"):
        known = [episode.position for episode in dataset.episodes(("actions",), known_outcome_for="SFT")]
    assert known == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [e.position for e in dataset.episodes(("actions",), only_successful=True)] == [0]


def test_a_missing_or_damaged_shard_and_a_wrong_dataset_are_config_errors(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path, [_episode(rng, 3, "a", True), _episode(rng, 3, "b", True)])
    (tmp_path / "shards" / "episode_000000.npz").write_bytes(b"not a zip")
    (tmp_path / "shards" / "episode_000001.npz").unlink()
    dataset = EpisodeDataset(tmp_path)
    for position in (0, 1):
        with pytest.raises(ConfigError, match=rf"episode_00000{position}\.npz: cannot read frames"):
            dataset.episode(position)
    with pytest.raises(ConfigError, match="SFT needs joint_position actions"):
        EpisodeDataset(tmp_path, "joint_position", needed_by="SFT")
    with pytest.raises(ConfigError, match="not a bags2dataset output"):
        EpisodeDataset(tmp_path / "nowhere")


def test_an_episode_resized_to_a_model_image_size_keeps_its_pixels_and_camera_consistent(tmp_path):
    rng = np.random.default_rng(3)
    _write(tmp_path / "lift_data", [_episode(rng, 4, "lift the cube", True, CAMERA), _episode(rng, 3, "b", False)])
    dataset = EpisodeDataset(tmp_path / "lift_data")
    recorded, resized = dataset.episode(0), dataset.episode(0, image_size=16)
    # the dataset-qualified name and what the dataset says of every episode
    assert (resized.name, resized.episode_id, resized.dataset, resized.robot, resized.control_period_s) == \
        ("lift_data/ep-lift the cube", "ep-lift the cube", tmp_path / "lift_data", "panda_sim", 0.05)
    assert ShardEpisode(7, {}, Path("s.npz"), {}, Path("d")).name == "d/episode_000007"
    # frames: cv2.INTER_AREA of the recorded ones, nothing else changes
    expected = np.stack([cv2.resize(frame, (16, 16), interpolation=cv2.INTER_AREA) for frame in recorded.frames])
    assert resized.frames.dtype == np.uint8 and np.array_equal(resized.frames, expected)
    for name in SHARD_ARRAYS[1:]:
        assert np.array_equal(resized[name], recorded[name]), name
    assert recorded.image_size is None and resized.image_size == 16 and recorded.frames.shape[1:3] == (32, 32)
    # the calibration follows the frames: intrinsics halve (pixel centres stay put), the pose is the same
    camera, scaled = recorded.calibration, resized.calibration
    assert (scaled.width, scaled.height) == (16, 16) and scaled == camera.resized(16, 16)
    assert (scaled.fx, scaled.fy) == pytest.approx((camera.fx / 2, camera.fy / 2))
    assert scaled.cx == pytest.approx((camera.cx + 0.5) / 2 - 0.5)
    np.testing.assert_array_equal(scaled.world_to_camera_matrix, camera.world_to_camera_matrix)
    assert dataset.episode(1, image_size=16).calibration is None
    # frames already at the size are kept as they are; episodes(image_size=...) resizes every episode
    assert recorded.resized(32).frames is recorded.frames
    assert [e.frames.shape[1:] for e in dataset.episodes(("frames",), image_size=8)] == [(8, 8, 3)] * 2
    with pytest.raises(ConfigError, match="image_size must be positive"):
        recorded.resized(0)
    with pytest.raises(ConfigError, match="resizing needs the frames"):
        dataset.episode(0, ("actions",), image_size=16)


def test_the_reader_checks_the_arrays_against_the_format(tmp_path):
    rng = np.random.default_rng(4)
    written = _episode(rng, 4, "a", True)
    _write(tmp_path, [written])
    shard = tmp_path / "shards" / "episode_000000.npz"
    arrays = {name: getattr(written, name) for name in SHARD_ARRAYS}
    nan_actions = arrays["actions"].copy()
    nan_actions[2, 0] = np.nan
    for change, message in [({"actions": nan_actions}, "actions must be finite"),
                            ({"ee_pose": arrays["ee_pose"][:3]}, "the arrays must have one row per sample"),
                            ({"ee_pose": arrays["ee_pose"][:, :6]}, r"ee_pose must be \(4, 7\)"),
                            ({"frames": arrays["frames"].astype(np.float32)}, r"frames must be \(N, H, W, 3\) uint8"),
                            ({"actions": arrays["actions"][:, :6]}, r"actions must be \(4, 7\)")]:
        with shard.open("wb") as f:
            np.savez(f, **{**arrays, **change})
        with pytest.raises(ConfigError, match=rf"episode_000000\.npz: {message}"):
            EpisodeDataset(tmp_path).episode(0)
    # only the arrays read are checked
    assert len(EpisodeDataset(tmp_path).episode(0, ("frames", "ee_pose"))) == 4
