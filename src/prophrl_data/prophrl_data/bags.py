"""rosbag2 episode bags (MCAP storage) without rclpy: typestore, crash-tolerant writer, recovering reader.

The files are ordinary rosbag2 v9 bags: a directory holding ``<name>_0.mcap`` (profile ``ros2``, CDR
messages, ``ros2msg`` schemas, rosbag2's channel metadata, the ``rosbag2`` metadata record holding the
bare ``BagMetadata`` map as rosbag2_storage_mcap writes it) and ``metadata.yaml``, readable by
``ros2 bag info/play``, ``rosbags`` and the ``mcap`` tools. The MCAP records are written and read by
the ``mcap`` library; this module decides what goes in them, when data reaches the disk, and how a
damaged file is read.

Writer (:class:`BagWriter`)
    Every message is stored as canonical CDR: the bytes given are decoded (leniently, see
    :func:`deserialize_cdr`) and serialised again by the typestore, so alignment padding is zero and
    nothing trails the message, whatever produced them (rclpy's ``serialize_message`` leaves
    uninitialised padding and a trailing word that strict readers refuse). A message that does not
    decode as its topic's type is a :class:`BagError`. Messages go into MCAP chunks of at most
    ``chunk_size_bytes``; a chunk is written and the file flushed when it is full, when it is older
    than ``flush_period_s`` (checked on every write and on :meth:`BagWriter.flush`), and on close. The
    custom metadata (instruction, robot, task, episode_id, ...) is written as an MCAP metadata record
    whenever it changes, so a bag whose writer dies keeps it. :meth:`BagWriter.close` adds the
    ``rosbag2`` metadata record, the summary (statistics, indexes), the footer and ``metadata.yaml``
    with the custom metadata under rosbag2's ``custom_data``.

Reader (:func:`open_bag`) and recovery
    A complete MCAP file is read through its summary. When the footer or summary is missing (the
    writer was killed, or the file was cut) or ``metadata.yaml`` is missing or unreadable, the file is
    read record by record (the ``mcap`` stream reader, CRCs checked) and everything up to the last
    complete, intact record is kept; such a bag has ``recovered=True`` and ``recovery_notes`` saying
    what was cut. Limits:

    - Messages still in the writer's in-memory chunk when it died are lost: at most
      ``chunk_size_bytes`` or ``flush_period_s`` worth (512 KiB / 0.2 s by default), plus whatever a
      caller had queued but not yet passed to :meth:`BagWriter.write`. A topic's schema and channel
      travel in the first chunk written after :meth:`BagWriter.add_topic`, never after its messages.
    - A record cut off mid-write, or a chunk whose CRC or compression does not check out, ends the
      read: nothing after the first damaged record is read (there is no resynchronisation), so damage
      in the middle of a file (not a truncation) loses the rest of that file.
    - The MCAP header must be intact; a bag cut before its first chunk holds no message and raises
      ``BagError`` ("truncated beyond recovery").
    - Custom metadata is the last metadata record written before the crash: keys only known at close
      (``success`` in the recorder's bags) are absent. A bag's ``metadata.yaml`` can outlive a cut
      of its MCAP file: what it says about the episode's end is then not backed by the data (see
      prophrl_data.alignment, which takes the outcome of a recovered bag from its messages).
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
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Self

import yaml
from mcap.reader import SeekingReader
from mcap.records import Channel, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import LIBRARY_IDENTIFIER, MCAP0_MAGIC, CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from prophrl_common.bag_error import BagError

DEFAULT_CHUNK_SIZE_BYTES = 512 * 1024
DEFAULT_FLUSH_PERIOD_S = 0.2
STANDARD_TYPESTORE = Stores.ROS2_KILTED  # the same definitions as Humble for every type we record
CUSTOM_DATA_RECORD = "prophrl_custom_data"
ROSBAG2_METADATA_RECORD = "rosbag2"  # what rosbag2's own MCAP plugin writes at close
ROSBAG2_METADATA_VERSION = 9
COMPRESSION = {"none": CompressionType.NONE, "lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
_MESSAGE_RECORD_OVERHEAD = 1 + 8 + 2 + 4 + 8 + 8  # opcode, length, channel id, sequence, log and publish time
# What reading a cut or damaged file raises: the mcap library's McapError and CRC errors, struct and
# decoding errors, zstandard's and lz4's own errors, and MemoryError when a corrupt length asks for an
# impossible allocation. Caught only around the library's reads, never around our own logic.
_DAMAGE = Exception
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
    closes the bag properly: what was written stays readable. ``compression`` ("none", "lz4" or
    "zstd") applies to the chunks.
    """

    def __init__(self, path: str | Path, custom_data: Mapping[str, str] | None = None, *,
                 chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES, flush_period_s: float = DEFAULT_FLUSH_PERIOD_S,
                 compression: str = "none"):
        self.path = Path(path)
        if self.path.exists():
            raise BagError(self.path, "already exists; a bag is never overwritten")
        if chunk_size_bytes <= 0 or flush_period_s <= 0:
            raise ValueError("chunk_size_bytes and flush_period_s must be positive")
        if compression not in COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(COMPRESSION)}, got {compression!r}")
        _check_custom_data(custom_data or {})
        self.path.mkdir(parents=True)
        self.storage_path = self.path / f"{self.path.name}_0.mcap"
        self._file = self.storage_path.open("xb")
        self._chunk_size_bytes = chunk_size_bytes
        self._flush_period_s = flush_period_s
        # Chunks end where this class says (size, age, close): the library's own size limit is never reached.
        self._mcap = McapWriter(self._file, chunk_size=2**62, compression=COMPRESSION[compression])
        self._mcap.start(profile="ros2", library=f"prophrl_data.bags; {LIBRARY_IDENTIFIER}")
        self._store = default_typestore()
        self._custom_data: dict[str, str] = {}
        self._schemas: dict[str, int] = {}  # msgtype -> schema id
        self._channels: dict[str, _Channel] = {}
        self._pending_bytes = 0  # message bytes in the chunk not yet written
        self._chunk_opened_at = time.monotonic()
        self._start_ns: int | None = None
        self._end_ns = 0
        self._closed = False
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
        store = self._store
        if msgtype not in store.fielddefs:
            raise BagError(self.path, f"unknown message type {msgtype} for topic {topic}: not a ROS 2 standard type"
                                      " and not in the prophrl_msgs .msg files found (is AMENT_PREFIX_PATH set?)")
        type_hash = store.hash_rihs01(msgtype)
        if msgtype not in self._schemas:
            definition, _ = store.generate_msgdef(msgtype, ros_version=2)
            self._schemas[msgtype] = self._mcap.register_schema(msgtype, "ros2msg", definition.encode())
        qos_profiles = qos.as_rosbag2()
        channel_id = self._mcap.register_channel(topic, "cdr", self._schemas[msgtype], {
            "offered_qos_profiles": yaml.safe_dump(qos_profiles, sort_keys=False).strip(),
            "topic_type_hash": type_hash,
        })
        self._channels[topic] = _Channel(channel_id, topic, msgtype, {
            "name": topic, "type": msgtype, "serialization_format": "cdr",
            "offered_qos_profiles": qos_profiles, "type_description_hash": type_hash,
        })

    def write(self, topic: str, data: bytes | bytearray | memoryview, log_time_ns: int,
              publish_time_ns: int | None = None) -> None:
        """Append one CDR message (stored canonically); log_time is the receive time, publish_time the
        header stamp."""
        self._check_open()
        channel = self._channels.get(topic)
        if channel is None:
            raise BagError(self.path, f"topic {topic} was not added before writing to it")
        publish_time_ns = log_time_ns if publish_time_ns is None else publish_time_ns
        if not (0 <= log_time_ns < 2**64 and 0 <= publish_time_ns < 2**64):
            raise BagError(self.path, f"times must be unsigned 64-bit ns, got log_time {log_time_ns},"
                                      f" publish_time {publish_time_ns}")
        try:
            data = canonical_cdr(self._store, data, channel.msgtype)
        except Exception as exc:  # rosbags raises assorted errors on bytes that are not this type
            raise BagError(self.path, f"a {len(data)}-byte message on {topic} is not a valid {channel.msgtype}"
                                      f" in CDR: {exc}") from None
        if not self._pending_bytes:
            self._chunk_opened_at = time.monotonic()
        self._mcap.add_message(channel.channel_id, log_time_ns, data, publish_time_ns, channel.sequence)
        self._pending_bytes += len(data) + _MESSAGE_RECORD_OVERHEAD
        channel.sequence = (channel.sequence + 1) & 0xFFFFFFFF
        channel.count += 1
        self._start_ns = log_time_ns if self._start_ns is None else min(self._start_ns, log_time_ns)
        self._end_ns = max(self._end_ns, log_time_ns)
        if (self._pending_bytes >= self._chunk_size_bytes
                or time.monotonic() - self._chunk_opened_at >= self._flush_period_s):
            self._write_chunk()

    def set_custom_data(self, values: Mapping[str, str]) -> None:
        """Update rosbag2 custom_data; written to the file at once so it survives a crash."""
        self._check_open()
        _check_custom_data(values)
        self._custom_data.update(values)
        self._mcap.add_metadata(CUSTOM_DATA_RECORD, dict(self._custom_data))
        self._file.flush()

    def flush(self) -> None:
        """Write the pending chunk (if any) and flush the file to the OS."""
        self._check_open()
        if self._pending_bytes:
            self._write_chunk()

    def close(self) -> None:
        """Write the pending chunk, the rosbag2 metadata record, the summary, the footer and metadata.yaml.
        Idempotent. If this fails half-way, the file is left as a crashed writer would leave it (recoverable).
        """
        if self._closed:
            return
        self._closed = True
        try:
            channels = list(self._channels.values())
            metadata = rosbag2_metadata(self.storage_path.name, [c.topic_metadata for c in channels],
                                        [c.count for c in channels], self._start_ns or 0, self._end_ns,
                                        self._custom_data)
            self._mcap.add_metadata(ROSBAG2_METADATA_RECORD,
                                    {"serialized_metadata": yaml.safe_dump(metadata, sort_keys=False)})
            self._mcap.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        partial = self.path / "metadata.yaml.partial"
        partial.write_text(yaml.safe_dump({"rosbag2_bagfile_information": metadata}, sort_keys=False))
        partial.replace(self.path / "metadata.yaml")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BagError(self.path, "the writer is closed")

    def _write_chunk(self) -> None:
        self._mcap.flush()  # ends the chunk, writes it and its message indexes, flushes the file
        self._pending_bytes = 0


class _Cut(Exception):
    """The file ends, or is damaged, before the record being read."""


@dataclasses.dataclass
class _McapFile:
    """One MCAP file: schemas, channels and message counts, from its summary or from a record-by-record read."""

    path: Path
    bag_path: Path
    schemas: dict[int, tuple[str, str, str]] = dataclasses.field(default_factory=dict)  # id -> name, encoding, text
    channels: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)  # id -> topic, schema id
    counts: dict[int, int] = dataclasses.field(default_factory=dict)
    metadata: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)
    recovery_note: str = ""
    indexed: bool = False  # read through the summary (else record by record, up to `readable_messages`)
    readable_messages: int = 0
    size: int = 0

    @classmethod
    def open(cls, path: Path, bag_path: Path) -> _McapFile:
        mcap = cls(path, bag_path, size=path.stat().st_size)
        with path.open("rb") as f:
            mcap._check_header(f)
            if mcap._has_footer(f):
                mcap.indexed = mcap._read_summary(f)
            else:
                mcap.recovery_note = "no MCAP footer (the writer did not close the file, or the file was cut)"
            if not mcap.indexed:
                mcap._scan(f)
        return mcap

    def _error(self, problem: str) -> BagError:
        return BagError(self.bag_path, f"{self.path.name}: {problem}")

    def _check_header(self, f) -> None:
        if self.size == 0:
            raise self._error("empty file (0 bytes)")
        magic = f.read(len(MCAP0_MAGIC))
        if magic != MCAP0_MAGIC:
            if len(magic) < len(MCAP0_MAGIC) and MCAP0_MAGIC.startswith(magic):
                raise self._error("truncated beyond recovery: the MCAP magic is cut off")
            raise self._error("not an MCAP file (bad magic bytes)")
        f.seek(0)
        try:
            header = next(iter(self._stream_reader(f).records))
        except _DAMAGE:
            raise self._error("truncated beyond recovery: no complete MCAP header record") from None
        if not isinstance(header, Header):
            raise self._error("truncated beyond recovery: no complete MCAP header record")
        if header.profile != "ros2":
            raise self._error(f"MCAP profile is {header.profile!r}, not 'ros2': not a rosbag2 file")

    def _stream_reader(self, f) -> StreamReader:
        return StreamReader(f, validate_crcs=True, record_size_limit=self.size)

    def _has_footer(self, f) -> bool:
        if self.size < 2 * len(MCAP0_MAGIC):
            return False
        f.seek(self.size - len(MCAP0_MAGIC))
        return f.read() == MCAP0_MAGIC

    def _read_summary(self, f) -> bool:
        """Schemas, channels, counts and metadata from the summary; False when it lacks statistics or is damaged."""
        f.seek(0)
        try:
            reader = SeekingReader(f, validate_crcs=True, record_size_limit=self.size)
            summary = reader.get_summary()
            if summary is None or summary.statistics is None:
                return False
            for schema in summary.schemas.values():
                self._add_schema(schema)
            for channel in summary.channels.values():
                self._add_channel(channel)
            self.counts = dict(summary.statistics.channel_message_counts)
            self.metadata = [(record.name, dict(record.metadata)) for record in reader.iter_metadata()]
        except _DAMAGE:
            self.schemas.clear()
            self.channels.clear()
            self.counts.clear()
            self.metadata.clear()
            return False
        return True

    def _records(self, f) -> Iterator:
        """The data section's records in file order (chunks opened, CRCs checked); raises _Cut at the
        first cut-off or damaged record."""
        f.seek(0)
        records = iter(self._stream_reader(f).records)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except _DAMAGE as exc:
                raise _Cut(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
            if isinstance(record, (DataEnd, Footer)):
                return
            yield record

    def _scan(self, f) -> None:
        """Schemas, channels, metadata and counts record by record, up to the last complete record."""
        try:
            for record in self._records(f):
                if isinstance(record, Message):
                    self.counts[record.channel_id] = self.counts.get(record.channel_id, 0) + 1
                    self.readable_messages += 1
                elif isinstance(record, Schema):
                    self._add_schema(record)
                elif isinstance(record, Channel):
                    self._add_channel(record)
                elif isinstance(record, Metadata):
                    self.metadata.append((record.name, dict(record.metadata)))
        except _Cut as cut:
            self.recovery_note = "; ".join(filter(None, [
                self.recovery_note, f"kept the {self.readable_messages} messages before the first cut-off or"
                                    f" damaged record ({cut})"]))

    def messages(self, channel_ids: set[int]) -> Iterator[tuple[int, int, int, bytes]]:
        """(channel_id, log_time, publish_time, data) in file order."""
        with self.path.open("rb") as f:
            if self.indexed:
                yield from self._indexed_messages(f, channel_ids)
                return
            remaining = self.readable_messages
            try:
                for record in self._records(f):
                    if remaining == 0:
                        return
                    if isinstance(record, Message):
                        remaining -= 1
                        if record.channel_id in channel_ids:
                            yield record.channel_id, record.log_time, record.publish_time, record.data
            except _Cut:  # the cut that the scan found: everything before it has been yielded
                return

    def _indexed_messages(self, f, channel_ids: set[int]) -> Iterator[tuple[int, int, int, bytes]]:
        f.seek(0)
        try:
            reader = SeekingReader(f, validate_crcs=True, record_size_limit=self.size)
            for _schema, channel, message in reader.iter_messages(log_time_order=False):
                if channel.id in channel_ids:
                    yield channel.id, message.log_time, message.publish_time, message.data
        except _DAMAGE as exc:
            raise self._error(f"damaged: {type(exc).__name__}: {exc}") from None

    def _add_schema(self, schema: Schema) -> None:
        self.schemas[schema.id] = (schema.name, schema.encoding, bytes(schema.data).decode())

    def _add_channel(self, channel: Channel) -> None:
        if channel.message_encoding != "cdr":
            raise self._error(f"topic {channel.topic} uses message encoding {channel.message_encoding!r}, not cdr")
        self.channels[channel.id] = (channel.topic, channel.schema_id)


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
    "canonical_cdr",
    "cdr_header_stamp_ns",
    "default_typestore",
    "deserialize_cdr",
    "discover_bags",
    "is_bag",
    "normalize_msgtype",
    "open_bag",
    "rosbag2_metadata",
]
