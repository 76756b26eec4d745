"""The rosbag2 episode-bag format (MCAP storage) shared by the writer and the reader, without rclpy.

The files are ordinary rosbag2 v9 bags: a directory holding ``<name>_0.mcap`` (profile ``ros2``, CDR
messages, ``ros2msg`` schemas, rosbag2's channel metadata, the ``rosbag2`` metadata record holding the
bare ``BagMetadata`` map as rosbag2_storage_mcap writes it) and ``metadata.yaml``, readable by
``ros2 bag info/play``, ``rosbags`` and the ``mcap`` tools. The MCAP records are written and read by
the ``mcap`` library; :mod:`prophrl_data.bag_writer` decides what goes in them and when data reaches
the disk, :mod:`prophrl_data.bag_reader` how a complete or damaged file is read.

This module holds what both sides share: the names of the MCAP metadata records (``rosbag2``, and
``prophrl_custom_data`` for the custom metadata), the record types (:class:`TopicQos`,
:class:`TopicInfo`, :class:`BagMessage`), message type names (:func:`normalize_msgtype`), the CDR
helpers (:func:`cdr_header_stamp_ns`, the lenient :func:`deserialize_cdr` and :func:`canonical_cdr`),
the typestore of ROS 2 standard types plus prophrl_msgs (:func:`default_typestore`), and rosbag2's
``BagMetadata`` map (:func:`rosbag2_metadata`).

Errors are :class:`~prophrl_common.bag_error.BagError` (a ``ValueError``) naming the bag path and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

STANDARD_TYPESTORE = Stores.ROS2_KILTED  # the same definitions as Humble for every type we record
CUSTOM_DATA_RECORD = "prophrl_custom_data"
ROSBAG2_METADATA_RECORD = "rosbag2"  # what rosbag2's own MCAP plugin writes at close
ROSBAG2_METADATA_VERSION = 9
_NS = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class TopicQos:
    """The QoS a topic was offered with; stored so `ros2 bag play` republishes it the same way."""

    reliable: bool = True
    transient_local: bool = False
    depth: int = 10

    def as_rosbag2(self) -> list[dict]:
        return [{
            "history": "keep_last",
            "depth": self.depth,
            "reliability": "reliable" if self.reliable else "best_effort",
            "durability": "transient_local" if self.transient_local else "volatile",
            "deadline": {"sec": 0, "nsec": 0},
            "lifespan": {"sec": 0, "nsec": 0},
            "liveliness": "automatic",
            "liveliness_lease_duration": {"sec": 0, "nsec": 0},
            "avoid_ros_namespace_conventions": False,
        }]


@dataclasses.dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    message_count: int


@dataclasses.dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int  # when the recorder received it
    publish_time_ns: int  # the header stamp (or the receive time for messages without a header)
    data: bytes  # CDR


def normalize_msgtype(msgtype: str) -> str:
    """'sensor_msgs/Image' or 'sensor_msgs/msg/Image' -> 'sensor_msgs/msg/Image'."""
    parts = msgtype.strip("/").split("/")
    if len(parts) == 2:
        parts.insert(1, "msg")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a message type name: {msgtype!r} (expected package/msg/Name)")
    return "/".join(parts)


def cdr_header_stamp_ns(data: bytes | memoryview) -> int:
    """The header stamp (ns) of a CDR message whose first field is std_msgs/Header."""
    if len(data) < 12:
        raise ValueError(f"{len(data)} bytes is too short for a CDR message with a header")
    little_endian = data[1] == 1  # encapsulation 0x00 0x01 = CDR_LE, 0x00 0x00 = CDR_BE
    sec, nanosec = struct.unpack_from("<iI" if little_endian else ">iI", data, 4)
    return sec * _NS + nanosec


def deserialize_cdr(store: Typestore, data: bytes | memoryview, msgtype: str):
    """Like Typestore.deserialize_cdr, but accepting bytes after the message, as ROS 2 itself does.

    rclpy's serialize_message (Fast-CDR 2.x) sizes its buffer by the worst-case alignment, so a
    message with empty sequences of 8-byte values (e.g. a JointState without velocity/effort) ends
    in a few unused bytes, which rosbags' own deserialize_cdr rejects as a size mismatch. Bags
    written by other tools may hold such bytes; ours never do (see :func:`canonical_cdr`).
    """
    if len(data) < 4 or bytes(data[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise ValueError("invalid or unsupported CDR encapsulation")
    msgdef = store.get_msgdef(msgtype)
    deserialize = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
    message, _end = deserialize(memoryview(data)[4:], 0, msgdef.cls, store)
    return message


def canonical_cdr(store: Typestore, data: bytes | bytearray | memoryview, msgtype: str) -> bytes:
    """The message's canonical little-endian CDR: zero padding, exact size (what strict readers expect)."""
    return bytes(store.serialize_cdr(deserialize_cdr(store, data, msgtype), msgtype))


def _prophrl_msg_dir() -> Path | None:
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "share" / "prophrl_msgs" / "msg"
        if candidate.is_dir():
            return candidate
    source_tree = Path(__file__).resolve().parents[2] / "prophrl_msgs" / "msg"
    return source_tree if source_tree.is_dir() else None


@lru_cache(maxsize=1)
def default_typestore() -> Typestore:
    """ROS 2 standard message types plus prophrl_msgs (from its installed or source .msg files)."""
    store = get_typestore(STANDARD_TYPESTORE)
    msg_dir = _prophrl_msg_dir()
    if msg_dir is not None:
        types = {}
        for msg_file in sorted(msg_dir.glob("*.msg")):
            types.update(get_types_from_msg(msg_file.read_text(), f"prophrl_msgs/msg/{msg_file.stem}"))
        store.register(types)
    return store


def rosbag2_metadata(relative_file: str, topics: list[dict], counts: list[int], start_ns: int, end_ns: int,
                     custom_data: Mapping[str, str]) -> dict:
    """rosbag2's BagMetadata (version 9) as a map: the `rosbag2` MCAP metadata record holds it as it is,
    metadata.yaml under the key `rosbag2_bagfile_information`."""
    total = sum(counts)
    start = start_ns if total else 0
    duration = end_ns - start_ns if total else 0
    return {
        "version": ROSBAG2_METADATA_VERSION,
        "storage_identifier": "mcap",
        "duration": {"nanoseconds": duration},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": total,
        "topics_with_message_count": [
            {"topic_metadata": topic, "message_count": count} for topic, count in zip(topics, counts, strict=True)
        ],
        "compression_format": "",
        "compression_mode": "",
        "relative_file_paths": [relative_file],
        "files": [{
            "path": relative_file,
            "starting_time": {"nanoseconds_since_epoch": start},
            "duration": {"nanoseconds": duration},
            "message_count": total,
        }],
        "custom_data": dict(custom_data),
        "ros_distro": os.environ.get("ROS_DISTRO", ""),
    }


__all__ = [
    "CUSTOM_DATA_RECORD",
    "ROSBAG2_METADATA_RECORD",
    "ROSBAG2_METADATA_VERSION",
    "STANDARD_TYPESTORE",
    "BagMessage",
    "TopicInfo",
    "TopicQos",
    "canonical_cdr",
    "cdr_header_stamp_ns",
    "default_typestore",
    "deserialize_cdr",
    "normalize_msgtype",
    "rosbag2_metadata",
]
