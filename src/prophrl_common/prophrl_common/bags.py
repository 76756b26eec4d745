"""rosbag2 episode bags (MCAP storage) without rclpy: typestore, crash-tolerant writer, recovering reader.

The files are ordinary rosbag2 v9 bags: a directory holding ``<name>_0.mcap`` (profile ``ros2``, CDR
messages, ``ros2msg`` schemas, rosbag2's channel metadata) and ``metadata.yaml``, readable by
``ros2 bag info/play``, ``rosbags`` and the ``mcap`` tools. Message bytes are the CDR that rclpy's
``serialize_message`` produces; this module never deserialises on the write path.

Writer (:class:`BagWriter`)
    Messages go into MCAP chunks of at most ``chunk_size_bytes``; a chunk is written and the file
    flushed when it is full, when it is older than ``flush_period_s`` (checked on every write and on
    :meth:`BagWriter.flush`), and on close. Schema and channel records are written and flushed as soon
    as a topic is added, and the custom metadata (instruction, robot, task, episode_id, ...) is
    written as an MCAP metadata record whenever it changes, so a bag whose writer dies keeps all of
    them. :meth:`BagWriter.close` adds the summary (statistics, indexes), the footer and
    ``metadata.yaml`` with the custom metadata under rosbag2's ``custom_data``.

Reader (:func:`open_bag`) and recovery
    A complete MCAP file is read through its summary. When the footer or summary is missing (the
    writer was killed) or ``metadata.yaml`` is missing or unreadable, the reader scans the data
    section record by record and keeps everything up to the last complete record; such a bag has
    ``recovered=True`` and ``recovery_notes`` saying what was cut. Limits:

    - Messages still in the writer's in-memory chunk when it died are lost: at most
      ``chunk_size_bytes`` or ``flush_period_s`` worth (512 KiB / 0.2 s by default), plus whatever a
      caller had queued but not yet passed to :meth:`BagWriter.write`.
    - A record cut off mid-write, or a chunk whose CRC or compression does not check out, ends the
      scan: nothing after the first damaged record is read (there is no resynchronisation), so damage
      in the middle of a file (not a truncation) loses the rest of that file.
    - The MCAP header must be intact; a bag cut before its first chunk holds no message and raises
      ``BagError`` ("truncated beyond recovery").
    - Custom metadata is the last metadata record written before the crash: keys only known at close
      (``success`` in the recorder's bags) are absent.
    - Only MCAP storage is read; sqlite3 (``.db3``) bags must be converted first
      (``ros2 bag convert`` or ``rosbags-convert``).

Errors are :class:`BagError` (a ``ValueError``) naming the bag path and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Self

import yaml
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

DEFAULT_CHUNK_SIZE_BYTES = 512 * 1024
DEFAULT_FLUSH_PERIOD_S = 0.2
STANDARD_TYPESTORE = Stores.ROS2_KILTED  # the same definitions as Humble for every type we record
CUSTOM_DATA_RECORD = "prophrl_custom_data"
ROSBAG2_METADATA_RECORD = "rosbag2"  # what rosbag2's own MCAP plugin writes at close

_MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_OP_MESSAGE_INDEX, _OP_CHUNK_INDEX, _OP_STATISTICS, _OP_METADATA = 0x07, 0x08, 0x0B, 0x0C
_OP_METADATA_INDEX, _OP_SUMMARY_OFFSET, _OP_DATA_END = 0x0D, 0x0E, 0x0F
_RECORD_PREFIX = struct.Struct("<BQ")
_MESSAGE_PREFIX = struct.Struct("<BQHIQQ")  # record prefix + channel_id, sequence, log_time, publish_time
_MESSAGE_FIELDS = struct.Struct("<HIQQ")
_FOOTER_SIZE = _RECORD_PREFIX.size + 20
_NS = 1_000_000_000


class BagError(ValueError):
    """A bag that is missing, empty, damaged beyond recovery, or lacks what the caller needs."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"bag {path}: {problem}")


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
    data: bytes  # CDR, as rclpy's serialize_message produces it


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
    in a few unused bytes, which rosbags' own deserialize_cdr rejects as a size mismatch.
    """
    if len(data) < 4 or bytes(data[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise ValueError("invalid or unsupported CDR encapsulation")
    msgdef = store.get_msgdef(msgtype)
    deserialize = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
    message, _end = deserialize(memoryview(data)[4:], 0, msgdef.cls, store)
    return message


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


def _string(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack("<I", len(encoded)) + encoded


def _string_map(mapping: Mapping[str, str]) -> bytes:
    entries = b"".join(_string(key) + _string(value) for key, value in mapping.items())
    return struct.pack("<I", len(entries)) + entries


def _record(op: int, body: bytes) -> bytes:
    return _RECORD_PREFIX.pack(op, len(body)) + body


def _rosbag2_metadata(relative_file: str, topics: list[dict], counts: list[int], start_ns: int, end_ns: int,
                      custom_data: Mapping[str, str]) -> dict:
    total = sum(counts)
    start = start_ns if total else 0
    duration = end_ns - start_ns if total else 0
    return {"rosbag2_bagfile_information": {
        "version": 9,
        "storage_identifier": "mcap",
        "relative_file_paths": [relative_file],
        "duration": {"nanoseconds": duration},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": total,
        "topics_with_message_count": [
            {"topic_metadata": topic, "message_count": count} for topic, count in zip(topics, counts, strict=True)
        ],
        "compression_format": "",
        "compression_mode": "",
        "files": [{
            "path": relative_file,
            "starting_time": {"nanoseconds_since_epoch": start},
            "duration": {"nanoseconds": duration},
            "message_count": total,
        }],
        "custom_data": dict(custom_data),
        "ros_distro": os.environ.get("ROS_DISTRO", ""),
    }}


def _check_custom_data(values: Mapping[str, str]) -> None:
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"custom_data keys and values must be str (rosbag2 custom_data), got {key!r}: {value!r}")


@dataclasses.dataclass
class _Channel:
    channel_id: int
    topic: str
    msgtype: str
    topic_metadata: dict
    sequence: int = 0
    count: int = 0


class BagWriter:
    """Writes one rosbag2 bag (MCAP storage) from CDR bytes; not thread-safe (use one writer thread).

    Use as a context manager, or call :meth:`close`. Leaving the context with an exception still
    closes the bag properly: what was written stays readable.
    """

    def __init__(self, path: str | Path, custom_data: Mapping[str, str] | None = None, *,
                 chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES, flush_period_s: float = DEFAULT_FLUSH_PERIOD_S):
        self.path = Path(path)
        if self.path.exists():
            raise BagError(self.path, "already exists; a bag is never overwritten")
        if chunk_size_bytes <= 0 or flush_period_s <= 0:
            raise ValueError("chunk_size_bytes and flush_period_s must be positive")
        _check_custom_data(custom_data or {})
        self.path.mkdir(parents=True)
        self.storage_path = self.path / f"{self.path.name}_0.mcap"
        self._file = self.storage_path.open("xb")
        self._offset = 0
        self._chunk_size_bytes = chunk_size_bytes
        self._flush_period_s = flush_period_s
        self._custom_data: dict[str, str] = {}
        self._schemas: dict[str, tuple[int, bytes]] = {}  # msgtype -> (schema id, schema record)
        self._channels: dict[str, _Channel] = {}
        self._channel_records: list[bytes] = []
        self._metadata_index: list[bytes] = []
        self._chunk_indexes: list[bytes] = []
        self._start_ns: int | None = None
        self._end_ns = 0
        self._closed = False
        self._reset_chunk()
        self._write(_MAGIC)
        self._write(_record(_OP_HEADER, _string("ros2") + _string("prophrl_common.bags")))
        if custom_data:
            self.set_custom_data(custom_data)
        self._file.flush()

    @property
    def message_count(self) -> int:
        return sum(channel.count for channel in self._channels.values())

    @property
    def custom_data(self) -> dict[str, str]:
        return dict(self._custom_data)

    def add_topic(self, topic: str, msgtype: str, qos: TopicQos = TopicQos()) -> None:
        """Declare a topic before writing to it (again with the same type is a no-op)."""
        self._check_open()
        msgtype = normalize_msgtype(msgtype)
        if topic in self._channels:
            if self._channels[topic].msgtype != msgtype:
                known = self._channels[topic].msgtype
                raise BagError(self.path, f"topic {topic} already has type {known}, not {msgtype}")
            return
        store = default_typestore()
        if msgtype not in store.fielddefs:
            raise BagError(self.path, f"unknown message type {msgtype} for topic {topic}: not a ROS 2 standard type"
                                      " and not in the prophrl_msgs .msg files found (is AMENT_PREFIX_PATH set?)")
        type_hash = store.hash_rihs01(msgtype)
        if msgtype not in self._schemas:
            definition, _ = store.generate_msgdef(msgtype, ros_version=2)
            schema_id = len(self._schemas) + 1
            schema = _record(_OP_SCHEMA, struct.pack("<H", schema_id) + _string(msgtype) + _string("ros2msg")
                             + struct.pack("<I", len(definition.encode())) + definition.encode())
            self._schemas[msgtype] = (schema_id, schema)
            self._write(schema)
        qos_profiles = qos.as_rosbag2()
        channel_id = len(self._channels) + 1
        channel = _record(_OP_CHANNEL, struct.pack("<HH", channel_id, self._schemas[msgtype][0]) + _string(topic)
                          + _string("cdr") + _string_map({
                              "offered_qos_profiles": yaml.safe_dump(qos_profiles, sort_keys=False).strip(),
                              "topic_type_hash": type_hash,
                          }))
        self._channel_records.append(channel)
        self._write(channel)
        self._file.flush()
        self._channels[topic] = _Channel(channel_id, topic, msgtype, {
            "name": topic, "type": msgtype, "serialization_format": "cdr",
            "offered_qos_profiles": qos_profiles, "type_description_hash": type_hash,
        })

    def write(self, topic: str, data: bytes | bytearray | memoryview, log_time_ns: int,
              publish_time_ns: int | None = None) -> None:
        """Append one CDR message; log_time is the receive time, publish_time the header stamp."""
        self._check_open()
        channel = self._channels.get(topic)
        if channel is None:
            raise BagError(self.path, f"topic {topic} was not added before writing to it")
        publish_time_ns = log_time_ns if publish_time_ns is None else publish_time_ns
        if not (0 <= log_time_ns < 2**64 and 0 <= publish_time_ns < 2**64):
            raise BagError(self.path, f"times must be unsigned 64-bit ns, got log_time {log_time_ns},"
                                      f" publish_time {publish_time_ns}")
        if not self._chunk:
            self._chunk_opened_at = time.monotonic()
        self._chunk_messages.setdefault(channel.channel_id, []).append((log_time_ns, len(self._chunk)))
        self._chunk += _MESSAGE_PREFIX.pack(_OP_MESSAGE, _MESSAGE_FIELDS.size + len(data), channel.channel_id,
                                            channel.sequence, log_time_ns, publish_time_ns)
        self._chunk += data
        channel.sequence = (channel.sequence + 1) & 0xFFFFFFFF
        channel.count += 1
        self._chunk_start_ns = min(self._chunk_start_ns, log_time_ns)
        self._chunk_end_ns = max(self._chunk_end_ns, log_time_ns)
        self._start_ns = log_time_ns if self._start_ns is None else min(self._start_ns, log_time_ns)
        self._end_ns = max(self._end_ns, log_time_ns)
        chunk_age_s = time.monotonic() - self._chunk_opened_at
        if len(self._chunk) >= self._chunk_size_bytes or chunk_age_s >= self._flush_period_s:
            self._write_chunk()

    def set_custom_data(self, values: Mapping[str, str]) -> None:
        """Update rosbag2 custom_data; written to the file at once so it survives a crash."""
        self._check_open()
        _check_custom_data(values)
        self._custom_data.update(values)
        self._write_metadata_record(CUSTOM_DATA_RECORD, self._custom_data)
        self._file.flush()

    def flush(self) -> None:
        """Write the pending chunk (if any) and flush the file to the OS."""
        self._check_open()
        if self._chunk:
            self._write_chunk()

    def close(self) -> None:
        """Write the pending chunk, the summary, the footer and metadata.yaml. Idempotent.

        If this fails half-way, the file is left as a crashed writer would leave it (recoverable).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._chunk:
                self._write_chunk()
            channels = list(self._channels.values())
            metadata = _rosbag2_metadata(self.storage_path.name, [c.topic_metadata for c in channels],
                                         [c.count for c in channels], self._start_ns or 0, self._end_ns,
                                         self._custom_data)
            metadata_text = yaml.safe_dump(metadata, sort_keys=False)
            self._write_metadata_record(ROSBAG2_METADATA_RECORD, {"serialized_metadata": metadata_text})
            self._write(_record(_OP_DATA_END, struct.pack("<I", 0)))
            self._write_summary(channels)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        partial = self.path / "metadata.yaml.partial"
        partial.write_text(metadata_text)
        partial.replace(self.path / "metadata.yaml")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BagError(self.path, "the writer is closed")

    def _write(self, data: bytes | bytearray) -> None:
        self._file.write(data)
        self._offset += len(data)

    def _reset_chunk(self) -> None:
        self._chunk = bytearray()
        self._chunk_messages: dict[int, list[tuple[int, int]]] = {}
        self._chunk_start_ns = 2**64 - 1
        self._chunk_end_ns = 0
        self._chunk_opened_at = time.monotonic()

    def _write_chunk(self) -> None:
        records = self._chunk
        fields = (struct.pack("<QQQI", self._chunk_start_ns, self._chunk_end_ns, len(records), zlib.crc32(records))
                  + _string("") + struct.pack("<Q", len(records)))
        chunk_start = self._offset
        self._write(_RECORD_PREFIX.pack(_OP_CHUNK, len(fields) + len(records)) + fields)
        self._write(records)
        chunk_length = self._offset - chunk_start
        index_offsets = []
        for channel_id, entries in self._chunk_messages.items():
            index_offsets.append(struct.pack("<HQ", channel_id, self._offset))
            pairs = struct.pack(f"<{2 * len(entries)}Q", *(value for entry in entries for value in entry))
            self._write(_record(_OP_MESSAGE_INDEX, struct.pack("<HI", channel_id, len(pairs)) + pairs))
        index_length = self._offset - chunk_start - chunk_length
        offsets = b"".join(index_offsets)
        self._chunk_indexes.append(_record(_OP_CHUNK_INDEX, struct.pack(
            "<QQQQ", self._chunk_start_ns, self._chunk_end_ns, chunk_start, chunk_length)
            + struct.pack("<I", len(offsets)) + offsets + struct.pack("<Q", index_length) + _string("")
            + struct.pack("<QQ", len(records), len(records))))
        self._file.flush()
        self._reset_chunk()

    def _write_metadata_record(self, name: str, values: Mapping[str, str]) -> None:
        start = self._offset
        self._write(_record(_OP_METADATA, _string(name) + _string_map(values)))
        self._metadata_index.append(_record(_OP_METADATA_INDEX, struct.pack("<QQ", start, self._offset - start)
                                            + _string(name)))

    def _write_summary(self, channels: list[_Channel]) -> None:
        counts = {c.channel_id: c.count for c in channels}
        statistics = (struct.pack("<QHIIIIQQ", sum(counts.values()), len(self._schemas), len(channels), 0,
                                  len(self._metadata_index), len(self._chunk_indexes), self._start_ns or 0,
                                  self._end_ns)
                      + struct.pack("<I", 10 * len(counts))
                      + b"".join(struct.pack("<HQ", cid, n) for cid, n in counts.items()))
        groups = [
            (_OP_SCHEMA, [record for _, record in self._schemas.values()]),
            (_OP_CHANNEL, self._channel_records),
            (_OP_STATISTICS, [_record(_OP_STATISTICS, statistics)]),
            (_OP_METADATA_INDEX, self._metadata_index),
            (_OP_CHUNK_INDEX, self._chunk_indexes),
        ]
        summary_start = self._offset
        group_offsets = []
        for op, records in groups:
            if records:
                group_start = self._offset
                for record in records:
                    self._write(record)
                group_offsets.append(_record(_OP_SUMMARY_OFFSET, struct.pack(
                    "<BQQ", op, group_start, self._offset - group_start)))
        summary_offset_start = self._offset
        for record in group_offsets:
            self._write(record)
        self._write(_record(_OP_FOOTER, struct.pack("<QQI", summary_start, summary_offset_start, 0)))
        self._write(_MAGIC)


class _Truncation(Exception):
    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _read_string(buf, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", buf, pos)
    end = pos + 4 + length
    if end > len(buf):
        raise struct.error("string runs past its record")
    return bytes(buf[pos + 4:end]).decode(), end


def _read_string_map(buf, pos: int) -> tuple[dict[str, str], int]:
    (length,) = struct.unpack_from("<I", buf, pos)
    end = pos + 4 + length
    values, pos = {}, pos + 4
    while pos < end:
        key, pos = _read_string(buf, pos)
        values[key], pos = _read_string(buf, pos)
    return values, end


def _decompress(compression: str, data: bytes) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # a rosbags dependency

        return zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame  # a rosbags dependency

        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")


def _chunk_records(body: bytes, offset: int) -> memoryview:
    """The uncompressed, CRC-checked records of a Chunk record body."""
    try:
        _start, _end, size, crc = struct.unpack_from("<QQQI", body, 0)
        compression, pos = _read_string(body, 28)
        (compressed_size,) = struct.unpack_from("<Q", body, pos)
        pos += 8
        if pos + compressed_size > len(body):
            raise ValueError("compressed data runs past the chunk")
        records = _decompress(compression, body[pos:pos + compressed_size])
    except (struct.error, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise _Truncation(offset, f"unreadable chunk: {exc}") from None
    if len(records) != size or (crc and zlib.crc32(records) != crc):
        raise _Truncation(offset, "chunk fails its size/CRC check")
    return memoryview(records)


def _split_records(buf: memoryview, offset: int) -> list[tuple[int, memoryview]]:
    """(opcode, body) of every record packed in buf; all or nothing, so a bad chunk yields no message."""
    records, pos = [], 0
    while pos < len(buf):
        if pos + _RECORD_PREFIX.size > len(buf):
            raise _Truncation(offset, "record header runs past its chunk")
        op, length = _RECORD_PREFIX.unpack_from(buf, pos)
        body_start = pos + _RECORD_PREFIX.size
        if body_start + length > len(buf):
            raise _Truncation(offset, "record runs past its chunk")
        records.append((op, buf[body_start:body_start + length]))
        pos = body_start + length
    return records


@dataclasses.dataclass
class _McapFile:
    """One MCAP file: schemas, channels and message counts, from its summary or from a scan."""

    path: Path
    bag_path: Path
    schemas: dict[int, tuple[str, str, str]] = dataclasses.field(default_factory=dict)  # id -> name, encoding, text
    channels: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)  # id -> topic, schema id
    counts: dict[int, int] = dataclasses.field(default_factory=dict)
    metadata: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)
    recovery_note: str = ""
    data_start: int = 0
    data_end: int = 0

    @classmethod
    def open(cls, path: Path, bag_path: Path) -> _McapFile:
        mcap = cls(path, bag_path)
        size = path.stat().st_size
        with path.open("rb") as f:
            mcap.data_start = mcap._read_header(f, size)
            footer = mcap._read_footer(f, size)
            if footer is None:
                mcap.recovery_note = "no MCAP footer (the writer did not close the file)"
                mcap.data_end = size
                mcap._scan(f)
            else:
                summary_start, footer_start = footer
                mcap.data_end = summary_start or footer_start
                if not (summary_start and mcap._read_summary(f, summary_start, footer_start)):
                    mcap._scan(f)
        return mcap

    def _error(self, problem: str) -> BagError:
        return BagError(self.bag_path, f"{self.path.name}: {problem}")

    def _read_header(self, f, size: int) -> int:
        if size == 0:
            raise self._error("empty file (0 bytes)")
        magic = f.read(len(_MAGIC))
        if magic != _MAGIC:
            if len(magic) < len(_MAGIC) and _MAGIC.startswith(magic):
                raise self._error("truncated beyond recovery: the MCAP magic is cut off")
            raise self._error("not an MCAP file (bad magic bytes)")
        prefix = f.read(_RECORD_PREFIX.size)
        if len(prefix) < _RECORD_PREFIX.size:
            raise self._error("truncated beyond recovery: the MCAP header record is cut off")
        op, length = _RECORD_PREFIX.unpack(prefix)
        body = f.read(length) if op == _OP_HEADER and length < 1 << 20 else b""
        if op != _OP_HEADER or len(body) != length:
            raise self._error("truncated beyond recovery: no complete MCAP header record")
        try:
            profile, _ = _read_string(body, 0)
        except (struct.error, UnicodeDecodeError):
            raise self._error("malformed MCAP header record") from None
        if profile != "ros2":
            raise self._error(f"MCAP profile is {profile!r}, not 'ros2': not a rosbag2 file")
        return f.tell()

    def _read_footer(self, f, size: int) -> tuple[int, int] | None:
        """(summary_start, footer_start) of a closed file, None when the footer is missing or damaged."""
        footer_start = size - _FOOTER_SIZE - len(_MAGIC)
        if footer_start < self.data_start:
            return None
        f.seek(footer_start)
        tail = f.read()
        op, length = _RECORD_PREFIX.unpack_from(tail, 0)
        if tail[-len(_MAGIC):] != _MAGIC or op != _OP_FOOTER or length != 20:
            return None
        summary_start, _summary_offset_start, _crc = struct.unpack_from("<QQI", tail, _RECORD_PREFIX.size)
        if summary_start and not self.data_start <= summary_start < footer_start:
            return None
        return summary_start, footer_start

    def _read_summary(self, f, summary_start: int, footer_start: int) -> bool:
        """Schemas, channels, counts and metadata from the summary; False when it lacks statistics or is damaged."""
        f.seek(summary_start)
        summary = memoryview(f.read(footer_start - summary_start))
        metadata_offsets = []
        statistics_found = False
        try:
            for op, body in _split_records(summary, summary_start):
                if op == _OP_SCHEMA:
                    self._add_schema(body)
                elif op == _OP_CHANNEL:
                    self._add_channel(body)
                elif op == _OP_STATISTICS:
                    statistics_found = True
                    (count_bytes,) = struct.unpack_from("<I", body, 42)
                    for pos in range(46, 46 + count_bytes, 10):
                        channel_id, count = struct.unpack_from("<HQ", body, pos)
                        self.counts[channel_id] = count
                elif op == _OP_METADATA_INDEX:
                    metadata_offsets.append(struct.unpack_from("<QQ", body, 0))
            for offset, length in metadata_offsets:
                if not (self.data_start <= offset and offset + length <= summary_start):
                    raise ValueError("metadata index points outside the data section")
                f.seek(offset)
                self._add_metadata(memoryview(f.read(length))[_RECORD_PREFIX.size:])
        except (_Truncation, struct.error, UnicodeDecodeError, ValueError):
            statistics_found = False
        if not statistics_found:
            self.schemas.clear()
            self.channels.clear()
            self.counts.clear()
            self.metadata.clear()
        return statistics_found

    def _scan(self, f) -> None:
        """Schemas, channels, metadata and counts record by record, up to the last complete record."""
        try:
            self._collect(f)
        except _Truncation as cut:
            lost = self.data_end - cut.offset
            self.data_end = cut.offset
            self.recovery_note = "; ".join(filter(None, [
                self.recovery_note, f"kept the records before byte {cut.offset}, dropped {lost} bytes ({cut.reason})"]))
            # count again up to the cut, so a chunk that failed half-way contributes nothing
            self.schemas.clear()
            self.channels.clear()
            self.counts.clear()
            self.metadata.clear()
            self._collect(f)

    def _collect(self, f) -> None:
        for offset, op, body in self._records(f):
            try:
                if op == _OP_MESSAGE:
                    if len(body) < _MESSAGE_FIELDS.size:
                        raise struct.error("message record shorter than its fixed fields")
                    (channel_id,) = struct.unpack_from("<H", body, 0)
                    self.counts[channel_id] = self.counts.get(channel_id, 0) + 1
                elif op == _OP_SCHEMA:
                    self._add_schema(body)
                elif op == _OP_CHANNEL:
                    self._add_channel(body)
                elif op == _OP_METADATA:
                    self._add_metadata(body)
            except (struct.error, UnicodeDecodeError) as exc:
                raise _Truncation(offset, f"malformed record: {exc}") from None

    def _records(self, f) -> Iterator[tuple[int, int, memoryview]]:
        """(offset, opcode, body) of the data-section records in file order, chunks expanded (offset: the
        chunk's). Raises _Truncation at the first incomplete or corrupt record."""
        pos = self.data_start
        f.seek(pos)
        while pos < self.data_end:
            prefix = f.read(_RECORD_PREFIX.size)
            if len(prefix) < _RECORD_PREFIX.size:
                raise _Truncation(pos, "record header cut off")
            op, length = _RECORD_PREFIX.unpack(prefix)
            if op == 0 or pos + _RECORD_PREFIX.size + length > self.data_end:
                raise _Truncation(pos, "record cut off" if op else "invalid record")
            body = f.read(length)
            if op in (_OP_DATA_END, _OP_FOOTER):
                return
            if op == _OP_CHUNK:
                for inner_op, inner_body in _split_records(_chunk_records(body, pos), pos):
                    yield pos, inner_op, inner_body
            else:
                yield pos, op, memoryview(body)
            pos += _RECORD_PREFIX.size + length

    def messages(self, channel_ids: set[int]) -> Iterator[tuple[int, int, int, bytes]]:
        """(channel_id, log_time, publish_time, data) in file order, up to data_end."""
        with self.path.open("rb") as f:
            try:
                for offset, op, body in self._records(f):
                    if op != _OP_MESSAGE:
                        continue
                    if len(body) < _MESSAGE_FIELDS.size:
                        raise _Truncation(offset, "malformed message record")
                    channel_id, _sequence, log_time, publish_time = _MESSAGE_FIELDS.unpack_from(body, 0)
                    if channel_id in channel_ids:
                        yield channel_id, log_time, publish_time, bytes(body[_MESSAGE_FIELDS.size:])
            except _Truncation as damage:  # only in a closed file: a crashed one was scanned to its last good record
                raise self._error(f"damaged at byte {damage.offset}: {damage.reason}") from None

    def _add_schema(self, body) -> None:
        (schema_id,) = struct.unpack_from("<H", body, 0)
        name, pos = _read_string(body, 2)
        encoding, pos = _read_string(body, pos)
        text, _ = _read_string(body, pos)
        self.schemas[schema_id] = (name, encoding, text)

    def _add_channel(self, body) -> None:
        channel_id, schema_id = struct.unpack_from("<HH", body, 0)
        topic, pos = _read_string(body, 4)
        encoding, _ = _read_string(body, pos)
        if encoding != "cdr":
            raise self._error(f"topic {topic} uses message encoding {encoding!r}, not cdr")
        self.channels[channel_id] = (topic, schema_id)

    def _add_metadata(self, body) -> None:
        name, pos = _read_string(body, 0)
        values, _ = _read_string_map(body, pos)
        self.metadata.append((name, values))


def _custom_data_from_rosbag2(metadata: object) -> dict[str, str]:
    if isinstance(metadata, dict):
        info = metadata.get("rosbag2_bagfile_information", metadata)
        if isinstance(info, dict) and isinstance(info.get("custom_data"), dict):
            return {str(k): str(v) for k, v in info["custom_data"].items()}
    return {}


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class Bag:
    """An opened bag: topics, custom metadata and a message iterator. Build it with :func:`open_bag`."""

    def __init__(self, path: Path, files: list[_McapFile], custom_data: dict[str, str], notes: list[str]):
        self.path = path
        self._files = files
        self.custom_data = custom_data
        self.recovery_notes = tuple(notes)
        self._typestore: Typestore | None = None
        topics: dict[str, TopicInfo] = {}
        for mcap in files:
            for channel_id, (topic, schema_id) in mcap.channels.items():
                msgtype = mcap.schemas[schema_id][0] if schema_id in mcap.schemas else ""
                known = topics.get(topic)
                if known is not None and known.msgtype != msgtype:
                    raise BagError(path, f"topic {topic} is recorded with two types: {known.msgtype} and {msgtype}")
                count = (known.message_count if known else 0) + mcap.counts.get(channel_id, 0)
                topics[topic] = TopicInfo(topic, msgtype, count)
        self.topics = topics

    @property
    def recovered(self) -> bool:
        return bool(self.recovery_notes)

    @property
    def message_count(self) -> int:
        return sum(info.message_count for info in self.topics.values())

    def require_topics(self, required: Mapping[str, str]) -> None:
        """Raise BagError unless every topic is present, with messages, and of the given type."""
        for topic, msgtype in required.items():
            info = self.topics.get(topic)
            if info is None or info.message_count == 0:
                present = ", ".join(f"{t} ({i.message_count})" for t, i in sorted(self.topics.items())) or "none"
                raise BagError(self.path, f"missing required topic {topic} ({normalize_msgtype(msgtype)});"
                                          f" topics with message counts: {present}")
            expected = normalize_msgtype(msgtype)
            if info.msgtype != expected:
                raise BagError(self.path, f"topic {topic} has type {info.msgtype}, expected {expected}")

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Messages of the given topics (all by default) in file order, i.e. the order they were written."""
        wanted = None if topics is None else set(topics)
        for mcap in self._files:
            selected = {}
            for channel_id, (topic, schema_id) in mcap.channels.items():
                if wanted is None or topic in wanted:
                    selected[channel_id] = (topic, mcap.schemas[schema_id][0] if schema_id in mcap.schemas else "")
            if not selected:
                continue
            for channel_id, log_time, publish_time, data in mcap.messages(set(selected)):
                topic, msgtype = selected[channel_id]
                yield BagMessage(topic, msgtype, log_time, publish_time, data)

    def deserialize(self, message: BagMessage):
        """The message as a rosbags object (same field names as the rclpy message)."""
        store = self.typestore()
        if message.msgtype not in store.fielddefs:
            raise BagError(self.path, f"no definition for message type {message.msgtype!r} on {message.topic}")
        try:
            return deserialize_cdr(store, message.data, message.msgtype)
        except Exception as exc:  # rosbags raises assorted errors on malformed CDR
            raise BagError(self.path, f"cannot decode a {message.msgtype} message on {message.topic}"
                                      f" at {message.log_time_ns} ns: {exc}") from exc

    def typestore(self) -> Typestore:
        """Types as recorded in this bag's schemas; types without a schema come from default_typestore()."""
        if self._typestore is None:
            store = get_typestore(Stores.EMPTY)
            fallback = default_typestore()
            try:
                for mcap in self._files:
                    for name, encoding, text in mcap.schemas.values():
                        if text and encoding == "ros2msg":
                            store.register(get_types_from_msg(text, name))
                        elif text and encoding == "ros2idl":
                            store.register(get_types_from_idl(text))
                        elif name in fallback.fielddefs and name not in store.fielddefs:
                            store.register(get_types_from_msg(fallback.generate_msgdef(name, ros_version=2)[0], name))
            except TypesysError as exc:
                raise BagError(self.path, f"conflicting message definitions in the bag: {exc}") from exc
            self._typestore = store
        return self._typestore


def _bag_storage_files(path: Path) -> tuple[list[Path], dict[str, str], list[str]]:
    """The bag's MCAP files, the custom_data from metadata.yaml, and notes on anything missing."""
    if path.is_file():
        if path.suffix != ".mcap":
            raise BagError(path, "not a rosbag2 bag: expected a bag directory or an .mcap file")
        return [path], {}, []
    metadata_path = path / "metadata.yaml"
    on_disk = sorted(path.glob("*.mcap"), key=_natural_key)
    if not metadata_path.is_file():
        if not on_disk:
            if list(path.glob("*.db3")):
                raise BagError(path, "sqlite3 storage is not supported: convert it to MCAP with"
                                     " `ros2 bag convert` or `rosbags-convert`")
            raise BagError(path, "empty bag directory: no metadata.yaml and no .mcap file")
        return on_disk, {}, ["metadata.yaml is missing (the writer did not close the bag)"]
    try:
        metadata = yaml.safe_load(metadata_path.read_text())
        info = metadata["rosbag2_bagfile_information"]
        storage = info["storage_identifier"]
        listed = [path / Path(name).name for name in info["relative_file_paths"]]
    except (yaml.YAMLError, KeyError, TypeError, OSError) as exc:
        if not on_disk:
            raise BagError(path, f"unreadable metadata.yaml ({exc}) and no .mcap file") from None
        return on_disk, {}, [f"metadata.yaml is unreadable ({exc}); scanned the .mcap files"]
    if storage != "mcap":
        raise BagError(path, f"storage {storage!r} is not supported: convert it to MCAP with"
                             " `ros2 bag convert` or `rosbags-convert`")
    missing = [p.name for p in listed if not p.is_file()]
    if missing:
        raise BagError(path, f"files listed in metadata.yaml are missing: {missing}")
    if info.get("compression_mode") == "file":
        raise BagError(path, "file-compressed bags are not supported: decompress them first")
    return listed, _custom_data_from_rosbag2(metadata), []


def open_bag(path: str | Path) -> Bag:
    """Open a rosbag2 bag (a directory, or one .mcap file), recovering a truncated one if needed.

    Raises BagError for a missing path, an empty bag, a bag truncated beyond recovery (no complete
    message left), a damaged file, or unsupported storage.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(path, "does not exist")
    storage_files, yaml_custom_data, notes = _bag_storage_files(path)
    files = [_McapFile.open(file, path) for file in storage_files]
    custom_data: dict[str, str] = {}
    for mcap in files:
        for name, values in mcap.metadata:
            if name == CUSTOM_DATA_RECORD:
                custom_data.update(values)
            elif name == ROSBAG2_METADATA_RECORD and "serialized_metadata" in values:
                try:
                    custom_data.update(_custom_data_from_rosbag2(yaml.safe_load(values["serialized_metadata"])))
                except yaml.YAMLError:
                    notes.append(f"{mcap.path.name}: unreadable rosbag2 metadata record")
        if mcap.recovery_note:
            notes.append(f"{mcap.path.name}: {mcap.recovery_note}")
    custom_data.update(yaml_custom_data)
    bag = Bag(path, files, custom_data, notes)
    if bag.message_count == 0:
        if bag.recovered:
            raise BagError(path, "truncated beyond recovery: no complete message ("
                                 + "; ".join(bag.recovery_notes) + ")")
        raise BagError(path, "empty bag: it contains no messages")
    return bag


def is_bag(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".mcap") or (
        path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap"))))


def discover_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Expand bag paths: each is a bag (directory or .mcap file) or a directory whose entries are bags."""
    bags = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BagError(path, "does not exist")
        if is_bag(path):
            bags.append(path)
            continue
        children = sorted((c for c in path.iterdir() if is_bag(c)), key=_natural_key) if path.is_dir() else []
        if not children:
            raise BagError(path, "is neither a rosbag2 bag nor a directory containing bags")
        bags.extend(children)
    return bags


__all__ = [
    "Bag",
    "BagError",
    "BagMessage",
    "BagWriter",
    "TopicInfo",
    "TopicQos",
    "cdr_header_stamp_ns",
    "default_typestore",
    "deserialize_cdr",
    "discover_bags",
    "is_bag",
    "normalize_msgtype",
    "open_bag",
]
