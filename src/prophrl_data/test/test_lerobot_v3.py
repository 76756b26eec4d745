"""LeRobot v3: the export conforms to lerobot 0.6.1's layout and stats; LeRobot datasets import into shards.

lerobot itself cannot be imported here (Python 3.12 + torchvision); the layout checked is the one its
0.6.1 writer produces (datasets/dataset_writer.py, dataset_metadata.py, compute_stats.py, video_utils.py,
configs/video.py). `write_lerobot_shaped` below writes a dataset the way that writer lays one out, with
choices our exporter never makes (a video per episode appended to the previous file until a size limit
rolls over to the next file, data and episode files rolled over too, tasks written by pandas, state names
as a dict, the pose in a feature of its own, two cameras, none of this project's episode columns), so the
importer is checked against LeRobot's own datasets and not only ours.
"""

import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prophrl_common.chunks import ARM_ACTION_NAMES, EE_POSE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_common.robots import load_robot_config
from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_trainer.sft import load_demonstrations
from prophrl_data.cli import main_bags2dataset, main_lerobot2dataset
from prophrl_data.conversion import bags2dataset
from prophrl_data.lerobot_import import lerobot2dataset
from prophrl_data.lerobot_v3 import QUANTILE_KEYS, tasks_table

STATS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
# lerobot 0.6.1 get_video_info(video_path, RGBEncoderConfig()): the stream's keys, has_audio, the encoder's
# fields (vcodec excluded) and is_depth_map.
VIDEO_INFO_KEYS = {"video.height", "video.width", "video.codec", "video.pix_fmt", "video.fps", "video.channels",
                   "has_audio", "video.g", "video.crf", "video.preset", "video.fast_decode", "video.video_backend",
                   "video.extra_options", "is_depth_map"}


ROBOT = load_robot_config("panda_sim")


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Two short scripted episodes in the sim (real bags, with camera calibration)."""
    root = tmp_path_factory.mktemp("lerobot_bags")
    collect_direct(CollectSettings(episodes=2, max_steps=18, image_size=32), root / "bags", show_progress=False)
    return root / "bags"


def test_export_has_lerobot_0_6_1_stats_and_info(bags, tmp_path):
    root = bags2dataset([bags], tmp_path / "out", ROBOT, lerobot=True).lerobot_dir
    info = json.loads((root / "meta" / "info.json").read_text())
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    video_info = info["features"]["observation.images.camera"]["info"]
    assert set(video_info) == VIDEO_INFO_KEYS, "no legacy video.is_depth_map, the encoder's keys recorded"
    assert video_info["is_depth_map"] is False and video_info["video.codec"] == "av1"
    assert (video_info["video.g"], video_info["video.crf"], video_info["video.preset"]) == (2, 30, 12)

    stats = json.loads((root / "meta" / "stats.json").read_text())
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    for feature, feature_stats in stats.items():
        assert list(feature_stats) == list(STATS), feature
        shape = (3, 1, 1) if feature.startswith("observation.images") else np.shape(feature_stats["min"])
        assert all(np.shape(feature_stats[key]) == shape for key in STATS if key != "count"), feature
        quantiles = np.array([feature_stats[key] for key in QUANTILE_KEYS])
        assert np.all(np.diff(quantiles, axis=0) >= -1e-9), f"{feature}: quantiles not ordered"
        assert np.all(quantiles >= np.array(feature_stats["min"]) - 1e-6), feature
        assert np.all(quantiles <= np.array(feature_stats["max"]) + 1e-6), feature
    actions = np.array(data["action"], np.float64)
    assert np.shape(stats["action"]["q50"]) == (7,) and np.shape(stats["timestamp"]["q50"]) == (1,)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-3, atol=1e-5)

    episodes = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    counts = np.array(episodes["stats/action/count"], np.float64)
    for key in QUANTILE_KEYS:
        per_episode = np.array(episodes[f"stats/action/{key}"])
        # aggregated as lerobot does: count-weighted mean of the episodes' quantiles
        np.testing.assert_allclose(stats["action"][key], (per_episode * counts).sum(0) / counts.sum(), rtol=1e-9)
    first = actions[:episodes["length"][0]]
    bin_width = (first.max(0) - first.min(0)) / 5000
    for key, q in zip(QUANTILE_KEYS, (0.01, 0.1, 0.5, 0.9, 0.99)):
        # lerobot's histogram estimate: within a bin or so of the exact order statistic (inverted-CDF)
        exact = np.quantile(first, q, axis=0, method="inverted_cdf")
        below = np.quantile(first, q, axis=0, method="lower")
        assert np.all(np.array(episodes[f"stats/action/{key}"][0]) <= np.maximum(exact, below) + 2 * bin_width + 1e-6)
        assert np.all(np.array(episodes[f"stats/action/{key}"][0]) >= np.minimum(exact, below) - 2 * bin_width - 1e-6)


def _index_and_shards(directory):
    index = json.loads((directory / "index.json").read_text())
    shards = [dict(np.load(directory / e["shard"], allow_pickle=False)) for e in index["episodes"]]
    return index, shards


def test_export_then_import_gives_identical_samples(bags, tmp_path, capsys):
    exported = bags2dataset([bags], tmp_path / "exported", ROBOT, lerobot=True, video_codec="libx264rgb")
    assert main_lerobot2dataset(["--dataset", str(exported.lerobot_dir), "--out", str(tmp_path / "imported"),
                                 "--robot", "panda_sim"]) == 0
    assert "samples from 2 episodes" in capsys.readouterr().out
    original, original_shards = _index_and_shards(tmp_path / "exported")
    imported, imported_shards = _index_and_shards(tmp_path / "imported")
    for key in ("format", "robot", "joint_names", "state_names", "action_space", "action_names", "action_dim",
                "image_shape", "num_samples"):
        assert imported[key] == original[key], key
    for mine, theirs in zip(imported["episodes"], original["episodes"]):
        for key in ("episode_id", "instruction", "task", "success", "num_samples", "camera"):
            assert mine[key] == theirs[key], key
    for mine, theirs in zip(imported_shards, original_shards):
        for key in ("frames", "joint_positions", "ee_pose", "state", "actions"):
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
    a = load_demonstrations(tmp_path / "exported", 4, only_successful=False)
    b = load_demonstrations(tmp_path / "imported", 4, only_successful=False)
    for key in ("frames", "states", "chunks", "episode_index"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.instructions == b.instructions


def _encode(path, frames, fps, start_pts=0, container=None):
    """Append frames to an open mp4 (or open one): LeRobot concatenates episode videos into one file."""
    if container is None:
        container = av.open(str(path), "w")
        stream = container.add_stream("h264", rate=fps, options={"g": "2", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream = container.streams.video[0]
    for i, frame in enumerate(frames):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts, video_frame.time_base = start_pts + i, Fraction(1, fps)
        for packet in stream.encode(video_frame):
            container.mux(packet)
    return container


def _close(container):
    for packet in container.streams.video[0].encode():
        container.mux(packet)
    container.close()


def write_lerobot_shaped(root, episodes, fps=10, height=24, width=32):
    """A LeRobot v3 dataset laid out as lerobot 0.6.1's writer lays one out (module docstring); episodes
    are dicts of frames (two cameras), joints, pose, actions and task. Episodes 0-1 share files 000,
    episode 2 starts files 001 (the size rollover)."""
    joints, motors = list(ROBOT.joint_names), {"motors": list(ROBOT.joint_names)}
    features = {
        "observation.state": {"dtype": "float32", "shape": [len(joints)], "names": motors},
        "observation.ee_pose": {"dtype": "float32", "shape": [7], "names": list(EE_POSE_NAMES)},
        "action": {"dtype": "float32", "shape": [7], "names": list(ARM_ACTION_NAMES)},
        **{f"observation.images.{cam}": {"dtype": "video", "shape": [height, width, 3],
                                         "names": ["height", "width", "channels"], "info": None}
           for cam in ("front", "wrist")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    (root / "meta").mkdir(parents=True)
    pq.write_table(tasks_table(tasks), root / "meta" / "tasks.parquet")  # what pandas' to_parquet writes
    files = {0: 0, 1: 0, 2: 1}
    containers, offsets, rows, metas, total = {}, {}, {}, {}, 0
    for number, episode in enumerate(episodes):
        n, file_index = len(episode["actions"]), files[number]
        meta = {"episode_index": number, "tasks": [episode["task"]], "length": n,
                "data/chunk_index": 0, "data/file_index": file_index,
                "dataset_from_index": total, "dataset_to_index": total + n}
        for cam in ("front", "wrist"):
            key = (cam, file_index)
            start = offsets.get(key, 0)
            path = root / f"videos/observation.images.{cam}/chunk-000/file-{file_index:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            containers[key] = _encode(path, episode[cam], fps, start, containers.get(key))
            offsets[key] = start + n
            meta.update({f"videos/observation.images.{cam}/chunk_index": 0,
                         f"videos/observation.images.{cam}/file_index": file_index,
                         f"videos/observation.images.{cam}/from_timestamp": start / fps,
                         f"videos/observation.images.{cam}/to_timestamp": (start + n) / fps})
        meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": file_index,
                     "stats/action/mean": episode["actions"].mean(0).tolist()})
        metas.setdefault(file_index, []).append(meta)
        frame_index = np.arange(n)
        rows.setdefault(file_index, []).append({
            "observation.state": episode["joints"].tolist(), "observation.ee_pose": episode["pose"].tolist(),
            "action": episode["actions"].tolist(), "timestamp": (frame_index / fps).astype(np.float32).tolist(),
            "frame_index": frame_index.tolist(), "episode_index": [number] * n, "index": (total + frame_index).tolist(),
            "task_index": [tasks.index(episode["task"])] * n})
        total += n
    for container in containers.values():
        _close(container)
    types = {"observation.state": pa.list_(pa.float32()), "observation.ee_pose": pa.list_(pa.float32()),
             "action": pa.list_(pa.float32()), "timestamp": pa.float32()}
    for file_index, parts in rows.items():
        table = pa.table({name: pa.array([v for part in parts for v in part[name]], types.get(name, pa.int64()))
                          for name in parts[0]})
        path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    for file_index, entries in metas.items():
        path = root / f"meta/episodes/chunk-000/file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(entries), path)
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "robot_type": "panda_sim", "total_episodes": len(episodes), "total_frames": total,
        "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
        "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features},
        indent=4))
    return root


def _episode(rng, n, task, height=24, width=32):
    frames = {cam: np.stack([np.full((height, width, 3), (8 * i + 40 * c) % 256, np.uint8) for i in range(n)])
              for c, cam in enumerate(("front", "wrist"))}
    return {**frames, "task": task, "joints": rng.normal(size=(n, 7)).astype(np.float32),
            "pose": rng.normal(size=(n, 7)).astype(np.float32), "actions": rng.normal(size=(n, 7)).astype(np.float32)}


def test_a_dataset_laid_out_by_lerobot_imports(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, 9, "stack the cubes"), _episode(rng, 6, "lift the cube"), _episode(rng, 7, "lift the cube")]
    root = write_lerobot_shaped(tmp_path / "lerobot", episodes)
    with pytest.raises(ConfigError, match=r"2 camera features .* name one with --camera"):
        lerobot2dataset(root, tmp_path / "out", "panda_sim")
    with pytest.raises(ConfigError, match="records no success; pass --assume-success"):
        lerobot2dataset(root, tmp_path / "out", "panda_sim", camera="observation.images.wrist")
    assert not (tmp_path / "out").exists()
    summary = lerobot2dataset(root, tmp_path / "out", None, camera="observation.images.wrist", assume_success=True)
    assert (summary.episodes, summary.samples) == (3, 22)
    index, shards = _index_and_shards(tmp_path / "out")
    assert index["robot"] == "panda_sim" and index["action_space"] == "ee_delta_7d"
    assert [e["instruction"] for e in index["episodes"]] == ["stack the cubes", "lift the cube", "lift the cube"]
    assert all(e["success"] and e["camera"] is None for e in index["episodes"])
    assert index["control_period_s"] == pytest.approx(0.1)
    for episode, shard in zip(episodes, shards):
        np.testing.assert_array_equal(shard["joint_positions"], episode["joints"])
        np.testing.assert_array_equal(shard["ee_pose"], episode["pose"])
        np.testing.assert_array_equal(shard["actions"], episode["actions"])
        assert shard["frames"].shape == episode["wrist"].shape
        # the wrist camera's frames (not the front's), each the frame at its timestamp
        assert np.abs(shard["frames"].astype(int) - episode["wrist"]).mean() < 3
    demos = load_demonstrations(tmp_path / "out", 4)
    assert len(demos) == 22


def test_lerobot_inputs_give_one_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = write_lerobot_shaped(tmp_path / "lerobot", [_episode(rng, 4, "a"), _episode(rng, 4, "a"),
                                                      _episode(rng, 4, "b")])
    assert main_bags2dataset(["--bags", str(root), "--out", str(tmp_path / "o"), "--robot", "panda_sim"]) == 2
    assert "is a LeRobot dataset, not a bag: convert it with prophrl lerobot2dataset" in capsys.readouterr().err
    assert main_lerobot2dataset(["--dataset", str(root), "--out", str(root / "meta"), "--overwrite"]) == 2
    assert "is not a previous bags2dataset output" in capsys.readouterr().err
    assert main_lerobot2dataset(["--dataset", str(root), "--out", str(root), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err
    assert (root / "meta" / "info.json").is_file()
    assert main_lerobot2dataset(["--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a LeRobot dataset (no meta/info.json)" in capsys.readouterr().err


def test_bags2dataset_never_replaces_its_bags_or_a_foreign_directory(bags, tmp_path, capsys):
    """Regression: `bags2dataset --bags X --out X --overwrite` destroyed the bags."""
    before = sorted(p.relative_to(bags) for p in bags.rglob("*"))

    def convert(out, *extra):
        code = main_bags2dataset(["--bags", str(bags), "--out", str(out), "--robot", "panda_sim", *extra])
        return code, [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]

    assert convert(bags, "--overwrite") == (2, [f"prophrl bags2dataset: error: --out {bags} is the input {bags}: "
                                                "write the output somewhere else"])
    assert convert(bags.parent, "--overwrite")[1][0].endswith(f"holds the input {bags}: write the output somewhere else")
    assert sorted(p.relative_to(bags) for p in bags.rglob("*")) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert "is not a previous bags2dataset output" in convert(foreign, "--overwrite")[1][0]
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert convert(tmp_path / "dataset") == (0, [])
    assert "already exists (pass --overwrite" in convert(tmp_path / "dataset")[1][0]
    assert convert(tmp_path / "dataset", "--overwrite") == (0, [])


def test_image_stats_from_value_counts_match_the_per_pixel_computation():
    from prophrl_data.lerobot_v3 import STAT_KEYS, image_stats, sample_indices, vector_stats

    frames = np.random.default_rng(2).integers(0, 200, (150, 20, 24, 3), dtype=np.uint8)
    frames[:, :4] = 250
    fast = image_stats(frames)
    slow = vector_stats(frames[sample_indices(150)].reshape(-1, 3).astype(np.float64), count=100)
    for key in STAT_KEYS:
        scale = 1 if key == "count" else 255.0
        np.testing.assert_allclose(np.asarray(fast[key]).reshape(-1) * scale, np.asarray(slow[key]).reshape(-1),
                                   rtol=1e-6, atol=1e-6, err_msg=key)
