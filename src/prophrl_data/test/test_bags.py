"""prophrl_data.bag_format/bag_writer/bag_reader: rosbag2 MCAP round trips, canonical CDR, third-party readers, crash recovery, clear errors."""

import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader as RosbagsReader
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String

from prophrl_common.bag_error import BagError
from prophrl_data.bag_format import TopicQos, canonical_cdr, cdr_header_stamp_ns, default_typestore, deserialize_cdr
from prophrl_data.bag_reader import discover_bags, open_bag
from prophrl_data.bag_writer import BagWriter
from prophrl_common.chunks import array_to_chunk, chunk_to_array
from prophrl_common.images import image_to_numpy, numpy_to_image
from prophrl_common.testing import decode_bag_with_third_party_readers
from prophrl_msgs.msg import ActionChunk, EpisodeEvent

IMAGE, CHUNK = "/camera/image_raw", "/prophrl/action_chunk"
EVENT, INSTRUCTION = "/prophrl/episode", "/prophrl/instruction"


def sample_messages(count: int):
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        actions = rng.normal(size=(8, 7)).astype(np.float32)
        yield (numpy_to_image(pixels, "rgb8", stamp=10.0 + i * 0.05, frame_id="camera"),
               array_to_chunk(actions, "ee_delta_7d", 0.05, policy_version=i, instruction="lift",
                              stamp=Time(sec=10 + i, nanosec=7)))


def write_bag(path, count=20, custom_data=None, **writer_options):
    """Returns [(image, chunk, image_cdr, chunk_cdr)] as written."""
    sent = []
    with BagWriter(path, custom_data, **writer_options) as writer:
        writer.add_topic(IMAGE, "sensor_msgs/msg/Image", TopicQos(reliable=False))
        writer.add_topic(CHUNK, "prophrl_msgs/msg/ActionChunk")
        writer.add_topic(INSTRUCTION, "std_msgs/String", TopicQos(transient_local=True, depth=1))
        writer.write(INSTRUCTION, serialize_message(String(data="lift the cube")), 1_000)
        for i, (image, chunk) in enumerate(sample_messages(count)):
            image_cdr, chunk_cdr = serialize_message(image), serialize_message(chunk)
            writer.write(IMAGE, image_cdr, 2_000 + 10 * i, cdr_header_stamp_ns(image_cdr))
            writer.write(CHUNK, chunk_cdr, 2_005 + 10 * i, cdr_header_stamp_ns(chunk_cdr))
            sent.append((image, chunk, image_cdr, chunk_cdr))
    return sent


def test_round_trip_with_custom_types(tmp_path):
    sent = write_bag(tmp_path / "bag")
    bag = open_bag(tmp_path / "bag")
    assert not bag.recovered
    assert {t: (i.msgtype, i.message_count) for t, i in bag.topics.items()} == {
        IMAGE: ("sensor_msgs/msg/Image", 20), CHUNK: ("prophrl_msgs/msg/ActionChunk", 20),
        INSTRUCTION: ("std_msgs/msg/String", 1)}
    images = list(bag.messages([IMAGE]))
    chunks = list(bag.messages([CHUNK]))
    for i, ((image, chunk, image_cdr, chunk_cdr), image_msg, chunk_msg) in enumerate(
            zip(sent, images, chunks, strict=True)):
        store = default_typestore()  # stored canonically: rclpy's bytes with zero padding, nothing trailing
        assert image_msg.data == canonical_cdr(store, image_cdr, "sensor_msgs/msg/Image")
        assert chunk_msg.data == canonical_cdr(store, chunk_cdr, "prophrl_msgs/msg/ActionChunk")
        np.testing.assert_array_equal(image_to_numpy(deserialize_message(image_msg.data, Image)),
                                      image_to_numpy(image))
        assert (image_msg.log_time_ns, image_msg.publish_time_ns) == (2_000 + 10 * i, round((10.0 + i * 0.05) * 1e9))
        restored = deserialize_message(chunk_msg.data, ActionChunk)
        np.testing.assert_array_equal(chunk_to_array(restored), chunk_to_array(chunk))
        assert restored.policy_version == i and restored.instruction == "lift"
        assert chunk_msg.publish_time_ns == (10 + i) * 10**9 + 7
        decoded = bag.deserialize(chunk_msg)  # rosbags types, from the schema stored in the bag
        np.testing.assert_array_equal(decoded.data.reshape(8, 7), chunk_to_array(chunk))
    assert [m.topic for m in bag.messages()][:3] == [INSTRUCTION, IMAGE, CHUNK]  # file order = write order


def test_typestore_serializes_like_rclpy():
    """Our typestore's CDR equals rclpy's except in alignment padding, which rclpy leaves uninitialised."""
    store = default_typestore()
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=12, nanosec=34),
                                          frame_id="camera")
    pixels = np.arange(24 * 32 * 3, dtype=np.uint8)
    actions = np.linspace(-1, 1, 8 * 7, dtype=np.float32)
    cases = [
        (types["sensor_msgs/msg/Image"](header=header, height=24, width=32, encoding="rgb8", is_bigendian=0,
                                        step=96, data=pixels),
         Image(header=Header(stamp=Time(sec=12, nanosec=34), frame_id="camera"), height=24,
               width=32, encoding="rgb8", is_bigendian=0, step=96, data=pixels.tobytes())),
        (types["prophrl_msgs/msg/ActionChunk"](header=header, action_space="ee_delta_7d", horizon=8, action_dim=7,
                                               data=actions, control_period_s=0.05, policy_version=3,
                                               instruction="lift"),
         array_to_chunk(actions.reshape(8, 7), "ee_delta_7d", 0.05, policy_version=3, instruction="lift",
                        stamp=Time(sec=12, nanosec=34), frame_id="camera")),
        (types["prophrl_msgs/msg/EpisodeEvent"](header=header, event=2, episode_id="e1", instruction="lift",
                                                robot="panda_sim", task="t", success=True, message=""),
         EpisodeEvent(header=Header(stamp=Time(sec=12, nanosec=34), frame_id="camera"),
                      event=EpisodeEvent.SUCCESS, episode_id="e1", instruction="lift", robot="panda_sim", task="t",
                      success=True)),
    ]
    for ours_msg, rclpy_msg in cases:
        ours = bytes(store.serialize_cdr(ours_msg, ours_msg.__msgtype__))
        theirs = serialize_message(rclpy_msg)
        assert len(ours) == len(theirs)
        assert all(ours[i] == 0 for i in range(len(ours)) if ours[i] != theirs[i])  # differences are padding
        assert deserialize_message(ours, type(rclpy_msg)) == deserialize_message(theirs, type(rclpy_msg))
        reread = store.deserialize_cdr(theirs, ours_msg.__msgtype__)
        assert bytes(store.serialize_cdr(reread, ours_msg.__msgtype__)) == ours


def test_unused_trailing_bytes_from_rclpy_are_accepted():
    """rclpy sizes a JointState without velocity/effort for worst-case alignment: it ends in unused bytes."""
    cdr = serialize_message(JointState(name=["a", "b"], position=[0.5, 0.25]))
    decoded = deserialize_cdr(default_typestore(), cdr, "sensor_msgs/msg/JointState")
    assert list(decoded.name) == ["a", "b"] and decoded.position.tolist() == [0.5, 0.25]
    assert decoded.velocity.size == decoded.effort.size == 0


def test_messages_are_stored_as_canonical_cdr_that_strict_readers_decode(tmp_path):
    """rclpy's serialize_message leaves uninitialised padding and a trailing word (a JointState of 380 bytes
    where CDR needs 376): the bag holds the canonical bytes, which rosbags (strict) and mcap-ros2 decode."""
    joints = JointState(name=["a", "b", "c"], position=[0.5, 0.25, 1.0], velocity=[0.1, 0.2, 0.3])
    joints.header.frame_id = "base"
    rclpy_cdr = serialize_message(joints)
    with pytest.raises(Exception, match="size mismatch"):  # what a strict reader makes of rclpy's bytes
        default_typestore().deserialize_cdr(rclpy_cdr, "sensor_msgs/msg/JointState")
    with BagWriter(tmp_path / "bag") as writer:
        writer.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        writer.add_topic(EVENT, "prophrl_msgs/msg/EpisodeEvent")
        for i in range(5):
            joints.header.stamp = Time(sec=i)
            writer.write("/joint_states", serialize_message(joints), 1_000 + i)
        writer.write(EVENT, serialize_message(EpisodeEvent(event=EpisodeEvent.SUCCESS, episode_id="e", success=True)),
                     2_000)
    write_bag(tmp_path / "mixed")
    assert decode_bag_with_third_party_readers(tmp_path / "bag") == {"/joint_states": 5, EVENT: 1}
    assert decode_bag_with_third_party_readers(tmp_path / "mixed") == {IMAGE: 20, CHUNK: 20, INSTRUCTION: 1}
    stored = [m.data for m in open_bag(tmp_path / "bag").messages(["/joint_states"])]
    assert all(len(data) < len(rclpy_cdr) for data in stored)
    assert deserialize_message(stored[-1], JointState) == joints


def test_a_message_that_is_not_its_topics_type_is_refused(tmp_path):
    with BagWriter(tmp_path / "bag") as writer:
        writer.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        with pytest.raises(BagError, match="not a valid sensor_msgs/msg/JointState"):
            writer.write("/joint_states", b"\x00\x01\x00\x00\xff\xff", 1)
        writer.write("/joint_states", serialize_message(JointState(name=["a"], position=[1.0])), 2)
    assert open_bag(tmp_path / "bag").message_count == 1


def test_rosbag2_metadata_record_is_the_bare_bag_metadata_map(tmp_path):
    """rosbag2_storage_mcap stores YAML::convert<BagMetadata>::encode in the `rosbag2` record: `version` at the
    top, not wrapped in `rosbag2_bagfile_information` (that wrapper belongs to metadata.yaml only)."""
    import yaml
    from mcap.reader import make_reader

    write_bag(tmp_path / "bag", custom_data={"episode_id": "ep"})
    with (tmp_path / "bag" / "bag_0.mcap").open("rb") as f:
        records = {record.name: record.metadata for record in make_reader(f).iter_metadata()}
    stored = yaml.safe_load(records["rosbag2"]["serialized_metadata"])
    assert stored["version"] == 9 and "rosbag2_bagfile_information" not in stored
    assert set(stored) >= {"version", "storage_identifier", "duration", "starting_time", "message_count",
                           "topics_with_message_count", "compression_format", "compression_mode",
                           "relative_file_paths", "files", "custom_data", "ros_distro"}
    assert stored["storage_identifier"] == "mcap" and stored["message_count"] == 41
    assert stored["custom_data"] == {"episode_id": "ep"}
    assert {t["topic_metadata"]["name"]: t["message_count"] for t in stored["topics_with_message_count"]} == {
        IMAGE: 20, CHUNK: 20, INSTRUCTION: 1}
    on_disk = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())
    assert on_disk == {"rosbag2_bagfile_information": stored}


def test_metadata_round_trip_and_interop_with_rosbags(tmp_path):
    path = tmp_path / "episode"
    custom = {"episode_id": "ep-7", "instruction": "lift the cube", "robot": "panda_sim", "task": "lift"}
    with BagWriter(path, custom) as writer:
        writer.add_topic(EVENT, "prophrl_msgs/msg/EpisodeEvent")
        writer.write(EVENT, serialize_message(EpisodeEvent(event=EpisodeEvent.START)), 5)
        writer.set_custom_data({"success": "true"})
    expected = {**custom, "success": "true"}
    assert open_bag(path).custom_data == expected
    (path / "metadata.yaml").unlink()  # also kept inside the MCAP file
    assert open_bag(path).custom_data == expected
    write_bag(tmp_path / "other")
    with RosbagsReader(tmp_path / "other") as reader:  # an independent rosbag2 reader
        assert {c.topic: c.msgcount for c in reader.connections} == {IMAGE: 20, CHUNK: 20, INSTRUCTION: 1}
        assert sum(1 for _ in reader.messages()) == 41
    with pytest.raises(TypeError):
        BagWriter(tmp_path / "typed", {"success": True})


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from prophrl_data.bag_writer import BagWriter
    writer = BagWriter(sys.argv[1], {"episode_id": "killed", "instruction": "stack"}, flush_period_s=0.05)
    writer.add_topic("/counter", "std_msgs/msg/UInt32")
    for i in range(100000):
        writer.write("/counter", bytes([0, 1, 0, 0]) + i.to_bytes(4, "little"), 1000 + i)
        print(i, flush=True)
        time.sleep(0.002)
""")


def test_bag_of_a_killed_writer_is_readable_up_to_its_last_flush(tmp_path):
    path = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if int(line) >= 300:
                break
        child.send_signal(signal.SIGKILL)
        seen = int(line) + 1
    finally:
        child.kill()
        child.wait()
    # The writer runs on until the signal lands: it printed every message it wrote but perhaps the last.
    written = max([seen - 1, *map(int, child.stdout.read().split())]) + 2
    bag = open_bag(path)
    assert bag.recovered and any("footer" in note for note in bag.recovery_notes)
    counters = [int.from_bytes(m.data[4:], "little") for m in bag.messages()]
    assert counters == list(range(len(counters)))  # a gap-free prefix
    assert 0.8 * seen <= len(counters) <= written, (seen, written)
    assert bag.topics["/counter"].message_count == len(counters)
    assert bag.custom_data == {"episode_id": "killed", "instruction": "stack"}


def test_any_truncation_opens_consistently_or_fails_clearly(tmp_path):
    write_bag(tmp_path / "full", count=30, chunk_size_bytes=8_000)
    data = (tmp_path / "full" / "full_0.mcap").read_bytes()
    for cut in np.linspace(0, len(data) - 1, 60).astype(int):
        bag_dir = tmp_path / f"cut{cut}"
        bag_dir.mkdir()
        (bag_dir / "cut_0.mcap").write_bytes(data[:cut])
        try:
            bag = open_bag(bag_dir)
        except BagError as exc:
            assert str(bag_dir) in str(exc)
            continue
        assert bag.recovered
        assert len(list(bag.messages())) == bag.message_count > 0


def test_corrupt_bytes_only_ever_raise_bag_error(tmp_path):
    write_bag(tmp_path / "full", count=30, chunk_size_bytes=8_000)
    data = (tmp_path / "full" / "full_0.mcap").read_bytes()
    rng = np.random.default_rng(3)
    for trial in range(60):
        damaged = bytearray(data[:rng.integers(len(data) // 2, len(data) + 1)])
        for position in rng.integers(0, len(damaged), 3):
            damaged[position] = rng.integers(0, 256)
        bag_dir = tmp_path / f"damaged{trial}"
        bag_dir.mkdir()
        (bag_dir / "damaged_0.mcap").write_bytes(bytes(damaged))
        try:
            bag = open_bag(bag_dir)
            for message in bag.messages():
                bag.deserialize(message)
        except BagError as exc:
            assert str(bag_dir) in str(exc)


def test_damage_inside_a_closed_bag_is_reported(tmp_path):
    write_bag(tmp_path / "bag", count=30, chunk_size_bytes=8_000)
    mcap = tmp_path / "bag" / "bag_0.mcap"
    data = bytearray(mcap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mcap.write_bytes(bytes(data))
    with pytest.raises(BagError, match=r"bag_0.mcap: damaged: .*crc validation failed"):
        list(open_bag(tmp_path / "bag").messages())


def broken_bags(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "garbage_0.mcap").write_bytes(b"this is not an mcap file at all")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "zero_0.mcap").write_bytes(b"")
    write_bag(tmp_path / "source")
    (tmp_path / "cut_header").mkdir()
    (tmp_path / "cut_header" / "cut_0.mcap").write_bytes((tmp_path / "source" / "source_0.mcap").read_bytes()[:12])
    with BagWriter(tmp_path / "no_messages") as writer:
        writer.add_topic(IMAGE, "sensor_msgs/msg/Image")
    return {
        "missing": (tmp_path / "missing", "does not exist"),
        "empty_dir": (tmp_path / "empty_dir", "empty bag directory"),
        "garbage": (tmp_path / "garbage", "not an MCAP file"),
        "zero": (tmp_path / "zero", "empty file"),
        "cut_header": (tmp_path / "cut_header", "truncated beyond recovery"),
        "no_messages": (tmp_path / "no_messages", "empty bag"),
    }


def test_broken_bags_raise_bag_error_naming_the_bag(tmp_path):
    for path, problem in broken_bags(tmp_path).values():
        with pytest.raises(BagError, match=problem) as caught:
            open_bag(path)
        assert str(path) in str(caught.value) and isinstance(caught.value, ValueError)


def test_required_topics_are_checked(tmp_path):
    write_bag(tmp_path / "bag")
    bag = open_bag(tmp_path / "bag")
    bag.require_topics({IMAGE: "sensor_msgs/Image", CHUNK: "prophrl_msgs/msg/ActionChunk"})
    with pytest.raises(BagError, match="missing required topic /joint_states") as caught:
        bag.require_topics({"/joint_states": "sensor_msgs/msg/JointState"})
    assert str(tmp_path / "bag") in str(caught.value)
    with pytest.raises(BagError, match="has type sensor_msgs/msg/Image, expected sensor_msgs/msg/CompressedImage"):
        bag.require_topics({IMAGE: "sensor_msgs/msg/CompressedImage"})


def test_discover_bags(tmp_path):
    for name in ("ep2", "ep10", "ep1"):
        write_bag(tmp_path / "bags" / name, count=1)
    single = tmp_path / "single.mcap"
    shutil.copy(tmp_path / "bags" / "ep1" / "ep1_0.mcap", single)
    assert discover_bags([tmp_path / "bags", single]) == [
        tmp_path / "bags" / "ep1", tmp_path / "bags" / "ep2", tmp_path / "bags" / "ep10", single]
    assert open_bag(single).message_count == 3
    (tmp_path / "nothing").mkdir()
    with pytest.raises(BagError, match="neither a rosbag2 bag nor a directory containing bags"):
        discover_bags([tmp_path / "nothing"])
