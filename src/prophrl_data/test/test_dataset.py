"""bags2dataset: synthetic episode bags -> aligned samples, npz shards, LeRobot v3 export, clear errors."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from prophrl_common.bag_error import BagError
from prophrl_data.bag_writer import BagWriter
from prophrl_common.chunks import array_to_chunk
from prophrl_common.images import numpy_to_image
from prophrl_common.robots import load_robot_config
from prophrl_msgs.msg import EpisodeEvent
from prophrl_worldmodel import judge_clips
from prophrl_data.alignment import load_episode
from prophrl_data.cli import main_bags2dataset
from prophrl_data.conversion import bags2dataset

ROBOT = load_robot_config("panda_sim")
HEIGHT, WIDTH, HORIZON, FPS = 32, 48, 8, 20
T0, FRAME_NS, MS = 1_000_000_000, 50_000_000, 1_000_000
FIRST_CHUNK_FRAME, CHUNK_EVERY = 2, 4


def frame_pixels(i: int) -> np.ndarray:
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[..., 0] = 5 * i
    pixels[..., 1] = np.arange(WIDTH, dtype=np.uint8) * 4
    return pixels


def chunk_actions(number: int, action_dim: int = 7) -> np.ndarray:
    return np.full((HORIZON, action_dim), number, np.float32) + np.arange(HORIZON, dtype=np.float32)[:, None] / 100


def write_episode(path, *, frames=24, instruction="lift the cube", success=True, close=True, skip_topic=None,
                  joint_states_type=JointState, action_dims=None, joint_names=None, frame_ns=FRAME_NS, jitter_ns=0,
                  **writer_options):
    """Camera at 20 Hz, joint states at 100 Hz (reversed order + a finger joint), ee pose 1 ms after each
    frame, an 8-step chunk (0.05 s period) 1 ms before every 4th frame from frame 2; a SUCCESS (or FAILURE)
    event at the end. frame_ns / jitter_ns: another camera period / uniform random timestamp jitter."""
    jitter = np.random.default_rng(7).integers(-jitter_ns, jitter_ns + 1, frames) if jitter_ns else np.zeros(frames, int)
    frame_time = [T0 + i * frame_ns + int(jitter[i]) for i in range(frames)]
    joint_names = joint_names or [*reversed(ROBOT.joint_names), "panda_finger_joint1"]
    writer = BagWriter(path, {"episode_id": path.name, "instruction": instruction, "robot": ROBOT.name},
                       **writer_options)
    topics = {"/camera/image_raw": "sensor_msgs/msg/Image", "/joint_states": "sensor_msgs/msg/JointState",
              "/prophrl/ee_pose": "geometry_msgs/msg/PoseStamped",
              "/prophrl/action_chunk": "prophrl_msgs/msg/ActionChunk", "/prophrl/instruction": "std_msgs/msg/String",
              "/prophrl/episode": "prophrl_msgs/msg/EpisodeEvent"}
    if joint_states_type is String:
        topics["/joint_states"] = "std_msgs/msg/String"
    for topic, msgtype in topics.items():
        if topic != skip_topic:
            writer.add_topic(topic, msgtype)

    def write(topic, msg, t):
        if topic != skip_topic:
            writer.write(topic, serialize_message(msg), t)

    write("/prophrl/instruction", String(data=instruction), T0 - 10 * MS)
    write("/prophrl/episode", EpisodeEvent(event=EpisodeEvent.START), T0 - 5 * MS)
    for k in range((frame_time[-1] - T0) // (10 * MS) + 5):
        if joint_states_type is String:
            write("/joint_states", String(data="not joints"), T0 + k * 10 * MS - 2 * MS)
        else:
            positions = [k + j * 0.1 for j in range(len(joint_names))]
            write("/joint_states", JointState(name=joint_names, position=positions), T0 + k * 10 * MS - 2 * MS)
    for i in range(frames):
        if i >= FIRST_CHUNK_FRAME and (i - FIRST_CHUNK_FRAME) % CHUNK_EVERY == 0:
            number = (i - FIRST_CHUNK_FRAME) // CHUNK_EVERY
            action_dim = (action_dims or {}).get(number, 7)
            write("/prophrl/action_chunk", array_to_chunk(chunk_actions(number, action_dim),
                                                          "joint_position" if action_dim != 7 else "ee_delta_7d",
                                                          0.05), frame_time[i] - MS)
        write("/camera/image_raw", numpy_to_image(frame_pixels(i), "rgb8"), frame_time[i])
        pose = PoseStamped()
        pose.pose.position.x, pose.pose.orientation.w = float(i), 1.0
        write("/prophrl/ee_pose", pose, frame_time[i] + MS)
    if not close:
        writer.flush()  # then abandoned without a footer, as a killed recorder leaves it
        return path
    write("/prophrl/episode", EpisodeEvent(event=EpisodeEvent.SUCCESS if success else EpisodeEvent.FAILURE,
                                           success=success), frame_time[-1] + frame_ns)
    writer.set_custom_data({"success": "true" if success else "false"})
    writer.close()
    return path


def test_samples_are_aligned_to_camera_frames(tmp_path):
    episode = load_episode(write_episode(tmp_path / "ep"), ROBOT)
    kept = range(FIRST_CHUNK_FRAME, 24)  # frames 0-1 come before the first chunk
    assert episode.skipped_frames == FIRST_CHUNK_FRAME and len(episode) == len(kept)
    assert episode.frames.shape == (len(kept), HEIGHT, WIDTH, 3) and episode.frames.dtype == np.uint8
    assert episode.joint_positions.shape == (len(kept), 7) and episode.ee_pose.shape == (len(kept), 7)
    assert episode.action_chunks.shape == (len(kept), HORIZON, 7) and episode.state.shape == (len(kept), 14)
    assert (episode.instruction, episode.success, episode.episode_id) == ("lift the cube", True, "ep")
    assert episode.camera_rate_hz == pytest.approx(FPS)
    for row, i in enumerate(kept):
        np.testing.assert_array_equal(episode.frames[row], frame_pixels(i))
        number, step = divmod(i - FIRST_CHUNK_FRAME, CHUNK_EVERY)
        np.testing.assert_array_equal(episode.action_chunks[row], chunk_actions(number))
        assert episode.chunk_steps[row] == step
        np.testing.assert_allclose(episode.actions[row], chunk_actions(number)[step])
        # latest joint state is sample 5*i (2 ms before the frame); bag order was reversed: robot order restored
        np.testing.assert_allclose(episode.joint_positions[row], [5 * i + (6 - j) * 0.1 for j in range(7)], rtol=1e-6)
        assert episode.ee_pose[row, 0] == i - 1  # the pose 1 ms after the previous frame
        np.testing.assert_array_equal(episode.state[row], np.concatenate([episode.joint_positions[row],
                                                                          episode.ee_pose[row]]))


def test_shards_and_index(tmp_path):
    write_episode(tmp_path / "bags" / "ep_a")
    write_episode(tmp_path / "bags" / "ep_b", instruction="open the drawer", success=False, frames=16)
    summary = bags2dataset([tmp_path / "bags"], tmp_path / "out", "panda_sim")
    assert (summary.episodes, summary.samples, summary.lerobot_dir) == (2, 22 + 14, None)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert (index["robot"], index["action_space"], index["horizon"], index["action_dim"]) == (
        "panda_sim", "ee_delta_7d", HORIZON, 7)
    assert index["joint_names"] == list(ROBOT.joint_names) and len(index["state_names"]) == 14
    assert [(e["instruction"], e["success"], e["num_samples"]) for e in index["episodes"]] == [
        ("lift the cube", True, 22), ("open the drawer", False, 14)]
    with np.load(tmp_path / "out" / index["episodes"][1]["shard"], allow_pickle=False) as shard:
        assert shard["frames"].shape == (14, HEIGHT, WIDTH, 3)
        assert shard["action_chunks"].shape == (14, HORIZON, 7) and shard["chunk_steps"].dtype == np.int32
        np.testing.assert_array_equal(shard["frames"][0], frame_pixels(FIRST_CHUNK_FRAME))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bags", "out"]  # no staging left behind


def test_lerobot_export_leaves_the_process_scheduling_policy_alone(tmp_path):
    """Regression: SVT-AV1 run as root switched the converting thread to SCHED_FIFO 99, and every node
    process started from it afterwards ran real time and starved a 2-core machine (DDS included)."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    write_episode(tmp_path / "bags" / "ep_a")
    bags2dataset([tmp_path / "bags"], tmp_path / "out", ROBOT, lerobot=True)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                           capture_output=True, text=True, check=True)
    assert int(child.stdout) == before[0]


def test_lerobot_v3_export(tmp_path):
    write_episode(tmp_path / "bags" / "ep_a")
    write_episode(tmp_path / "bags" / "ep_b", instruction="open the drawer", frames=16)
    summary = bags2dataset([tmp_path / "bags"], tmp_path / "out", ROBOT, lerobot=True)
    root = summary.lerobot_dir
    lengths, total = [22, 14], 36
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "panda_sim"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, total, 2)
    assert info["splits"] == {"train": "0:2"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert set(features) == {"observation.state", "action", "observation.images.camera", "timestamp",
                             "frame_index", "episode_index", "index", "task_index"}
    assert features["observation.state"]["shape"] == [14] and features["action"]["shape"] == [7]
    assert features["action"]["names"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    video = features["observation.images.camera"]
    assert video["dtype"] == "video" and video["shape"] == [HEIGHT, WIDTH, 3]
    assert video["info"]["video.codec"] == "av1" and video["info"]["video.fps"] == FPS

    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert data.num_rows == total
    state_type = data.schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 14
    assert state_type.value_type == pa.float32() and data.schema.field("timestamp").type == pa.float32()
    assert data.schema.field("index").type == pa.int64()
    rows = data.to_pydict()
    assert rows["index"] == list(range(total))
    assert rows["episode_index"] == [0] * 22 + [1] * 14 and rows["task_index"] == [0] * 22 + [1] * 14
    assert rows["frame_index"] == list(range(22)) + list(range(14))
    np.testing.assert_allclose(rows["timestamp"][:3], [0, 0.05, 0.1], atol=1e-6)
    np.testing.assert_allclose(rows["action"][1], chunk_actions(0)[1], rtol=1e-6)

    episodes = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    assert episodes["length"] == lengths and episodes["tasks"] == [["lift the cube"], ["open the drawer"]]
    assert episodes["dataset_from_index"] == [0, 22] and episodes["dataset_to_index"] == [22, 36]
    assert episodes["videos/observation.images.camera/from_timestamp"] == [0.0, 22 / FPS]
    assert episodes["data/file_index"] == [0, 0] and episodes["meta/episodes/chunk_index"] == [0, 0]
    assert episodes["stats/action/count"] == [[22], [14]]
    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": ["lift the cube", "open the drawer"]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert set(stats["observation.state"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["index"]["count"] == [total] and np.shape(stats["observation.images.camera"]["mean"]) == (3, 1, 1)

    with av.open(str(root / "videos" / "observation.images.camera" / "chunk-000" / "file-000.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == total and decoded[0].shape == (HEIGHT, WIDTH, 3)
    assert np.abs(decoded[0].astype(int) - frame_pixels(FIRST_CHUNK_FRAME)).mean() < 8


def test_lerobot_export_puts_jittery_and_off_rate_cameras_on_its_frame_grid(tmp_path):
    """What a real robot records: camera timestamps with jitter, or a camera at another rate (a loaded
    machine's 10 Hz instead of 20). The LeRobot export takes each episode onto its fps grid instead of
    refusing it; the training shards keep every recorded frame."""
    write_episode(tmp_path / "bags" / "a_exact")
    write_episode(tmp_path / "bags" / "b_jitter", jitter_ns=12 * MS)
    write_episode(tmp_path / "bags" / "c_10hz", frame_ns=2 * FRAME_NS)
    with pytest.warns(UserWarning, match=r"c_10hz: camera at 10.0 Hz .* at 20 fps: \d+ of \d+ frames repeated"):
        summary = bags2dataset([tmp_path / "bags"], tmp_path / "out", ROBOT, lerobot=True)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [e["num_samples"] for e in index["episodes"]] == [22, 22, 22]
    info = json.loads((summary.lerobot_dir / "meta" / "info.json").read_text())
    episodes = pq.read_table(summary.lerobot_dir / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    # exact and jittery: one frame per grid point; 10 Hz: 21 intervals of 0.1 s -> 43 points at 20 fps
    assert info["fps"] == FPS and episodes["length"] == [22, 22, 43] and info["total_frames"] == 87
    data = pq.read_table(summary.lerobot_dir / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    rows = [i for i, e in enumerate(data["episode_index"]) if e == 1]
    jittery = load_episode(tmp_path / "bags" / "b_jitter", ROBOT)
    np.testing.assert_array_equal(np.array([data["action"][i] for i in rows], np.float32), jittery.actions)
    slow = [data["observation.state"][i][7] for i, e in enumerate(data["episode_index"]) if e == 2]
    assert slow[:4] == [FIRST_CHUNK_FRAME - 1] * 2 + [FIRST_CHUNK_FRAME] * 2  # each 10 Hz frame held twice


def test_bag_of_a_killed_recorder_converts(tmp_path):
    with pytest.warns(UserWarning, match="outcome is unknown"):
        episode = load_episode(write_episode(tmp_path / "killed", close=False), ROBOT)
    assert episode.recovered and episode.success is None and episode.instruction == "lift the cube"
    assert len(episode) == 24 - FIRST_CHUNK_FRAME


def cut_in_half(bag):
    """Truncate the bag's MCAP file mid-file, leaving its metadata.yaml (success: true) in place."""
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])
    assert "success: 'true'" in (bag / "metadata.yaml").read_text()


def test_a_truncated_bag_is_no_successful_demonstration(tmp_path):
    """The metadata.yaml of a cut bag still says success: true; the episode's end, which said so, is gone."""
    cut = write_episode(tmp_path / "bags" / "a_cut", chunk_size_bytes=4_000)
    write_episode(tmp_path / "bags" / "b_whole")
    write_episode(tmp_path / "bags" / "c_failed", success=False)
    cut_in_half(cut)
    with pytest.warns(UserWarning, match="a_cut: recovered .* outcome is unknown"):
        episode = load_episode(cut, ROBOT)
    assert episode.recovered and episode.success is None and 0 < len(episode) < 24 - FIRST_CHUNK_FRAME
    with pytest.warns(UserWarning, match="outcome is unknown"):
        bags2dataset([tmp_path / "bags"], tmp_path / "out", ROBOT, lerobot=True)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [(e["episode_id"], e["success"], e["recovered"]) for e in index["episodes"]] == [
        ("a_cut", None, True), ("b_whole", True, False), ("c_failed", False, False)]
    with pytest.warns(UserWarning, match="judge training leaves out 1 episode.*a_cut"):
        episodes = judge_clips.load_episodes(tmp_path / "out")
    assert [(e.episode_id.split("/")[-1], e.success) for e in episodes] == [("b_whole", True), ("c_failed", False)]


def test_a_cut_bag_keeps_the_outcome_its_surviving_events_record(tmp_path):
    """A cut that spares the episode's end (here: only the summary is lost) keeps its SUCCESS / FAILURE."""
    for name, success in (("won", True), ("lost", False)):
        bag = write_episode(tmp_path / name, success=success, chunk_size_bytes=4_000)
        mcap = next(bag.glob("*.mcap"))
        mcap.write_bytes(mcap.read_bytes()[:-200])
        episode = load_episode(bag, ROBOT)
        assert episode.recovered and episode.success is success and len(episode) == 24 - FIRST_CHUNK_FRAME


BROKEN = {
    "missing_topic": ({"skip_topic": "/prophrl/ee_pose"}, "missing required topic /prophrl/ee_pose"),
    "wrong_type": ({"joint_states_type": String}, "/joint_states has type std_msgs/msg/String"),
    "mixed_action_dims": ({"action_dims": {2: 6}}, r"action chunk #2 .* \(8, 6\), but earlier chunks"),
    "missing_joint": ({"joint_names": ["a", "b"]}, "joint_states lack joints"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_malformed_bag_gives_one_clear_error_and_no_output(tmp_path, case):
    options, problem = BROKEN[case]
    write_episode(tmp_path / "bags" / "a_good")
    bad = write_episode(tmp_path / "bags" / "b_bad", **options)
    with pytest.raises(BagError, match=problem) as caught:
        bags2dataset([tmp_path / "bags"], tmp_path / "out", "panda_sim", lerobot=True)
    assert str(bad) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bags"]


def test_unusable_bags_give_one_clear_error_and_no_output(tmp_path):
    good = write_episode(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "truncated_0.mcap").write_bytes((good / "good_0.mcap").read_bytes()[:20])
    mismatched = write_episode(tmp_path / "seven_dof_then_six", action_dims=dict.fromkeys(range(6), 6))
    for bad, problem in ((tmp_path / "empty", "neither a rosbag2 bag"), (truncated, "truncated beyond recovery"),
                         (mismatched, "action_space is joint_position, but ee_delta_7d in the first bag")):
        with pytest.raises(BagError, match=problem) as caught:
            bags2dataset([good, bad], tmp_path / "out", "panda_sim")
        assert str(bad) in str(caught.value)
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli(tmp_path, capsys):
    write_episode(tmp_path / "bags" / "ep")
    assert main_bags2dataset(["--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "out"),
                              "--robot", "panda_sim", "--lerobot"]) == 0
    assert "wrote 22 samples from 1 episodes" in capsys.readouterr().out
    assert (tmp_path / "out" / "lerobot" / "meta" / "info.json").is_file()
    assert main_bags2dataset(["--bags", str(tmp_path / "nope"), "--out", str(tmp_path / "out2"),
                              "--robot", "panda_sim"]) == 2
    assert f"bag {tmp_path / 'nope'}: does not exist" in capsys.readouterr().err
    assert main_bags2dataset(["--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "out"),
                              "--robot", "panda_sim"]) == 2
    assert "already exists" in capsys.readouterr().err
