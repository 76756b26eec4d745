"""The crash-tolerant rosbag2 bag writer (MCAP storage, see :mod:`prophrl_data.bag_format`): :class:`BagWriter`.

Every message is stored as canonical CDR: the bytes given are decoded (leniently, see
:func:`~prophrl_data.bag_format.deserialize_cdr`) and serialised again by the typestore, so alignment
padding is zero and nothing trails the message, whatever produced them (rclpy's ``serialize_message``
leaves uninitialised padding and a trailing word that strict readers refuse). A message that does not
decode as its topic's type is a :class:`~prophrl_common.bag_error.BagError`. Messages go into MCAP
chunks of at most ``chunk_size_bytes``; a chunk is written and the file flushed when it is full, when
it is older than ``flush_period_s`` (checked on every write and on :meth:`BagWriter.flush`), and on
close. The custom metadata (instruction, robot, task, episode_id, ...) is written as an MCAP metadata
record whenever it changes, so a bag whose writer dies keeps it. :meth:`BagWriter.close` adds the
``rosbag2`` metadata record, the summary (statistics, indexes), the footer and ``metadata.yaml`` with
the custom metadata under rosbag2's ``custom_data``.

What a killed writer's bag still holds, and how it is read, is described in :mod:`prophrl_data.bag_reader`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import yaml
from mcap.writer import LIBRARY_IDENTIFIER, CompressionType
from mcap.writer import Writer as McapWriter

from prophrl_common.bag_error import BagError
from prophrl_data.bag_format import (
    CUSTOM_DATA_RECORD,
    ROSBAG2_METADATA_RECORD,
    TopicQos,
    canonical_cdr,
    default_typestore,
    normalize_msgtype,
    rosbag2_metadata,
)

DEFAULT_CHUNK_SIZE_BYTES = 512 * 1024
DEFAULT_FLUSH_PERIOD_S = 0.2
COMPRESSION = {"none": CompressionType.NONE, "lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
_MESSAGE_RECORD_OVERHEAD = 1 + 8 + 2 + 4 + 8 + 8  # opcode, length, channel id, sequence, log and publish time


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
        self._mcap.start(profile="ros2", library=f"prophrl_data.bag_writer; {LIBRARY_IDENTIFIER}")
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


__all__ = [
    "COMPRESSION",
    "DEFAULT_CHUNK_SIZE_BYTES",
    "DEFAULT_FLUSH_PERIOD_S",
    "BagWriter",
]
