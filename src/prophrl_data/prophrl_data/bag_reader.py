"""The recovering rosbag2 bag reader (MCAP storage, see :mod:`prophrl_data.bag_format`).

:func:`open_bag` opens a bag (a directory, or one ``.mcap`` file) as a :class:`Bag`: its topics,
custom metadata and messages; :func:`is_bag` and :func:`discover_bags` find bags among paths.

A complete MCAP file is read through its summary. When the footer or summary is missing (the writer
was killed, or the file was cut) or ``metadata.yaml`` is missing or unreadable, the file is read
record by record (the ``mcap`` stream reader, CRCs checked) and everything up to the last complete,
intact record is kept; such a bag has ``recovered=True`` and ``recovery_notes`` saying what was cut.
Limits:

- Messages still in the writer's in-memory chunk when it died are lost: at most ``chunk_size_bytes``
  or ``flush_period_s`` worth (512 KiB / 0.2 s by default), plus whatever a caller had queued but not
  yet passed to :meth:`~prophrl_data.bag_writer.BagWriter.write`. A topic's schema and channel travel
  in the first chunk written after :meth:`~prophrl_data.bag_writer.BagWriter.add_topic`, never after
  its messages.
- A record cut off mid-write, or a chunk whose CRC or compression does not check out, ends the read:
  nothing after the first damaged record is read (there is no resynchronisation), so damage in the
  middle of a file (not a truncation) loses the rest of that file.
- The MCAP header must be intact; a bag cut before its first chunk holds no message and raises
  ``BagError`` ("truncated beyond recovery").
- Custom metadata is the last metadata record written before the crash: keys only known at close
  (``success`` in the recorder's bags) are absent. A bag's ``metadata.yaml`` can outlive a cut of its
  MCAP file: what it says about the episode's end is then not backed by the data (see
  prophrl_data.alignment, which takes the outcome of a recovered bag from its messages).
- Only MCAP storage is read; sqlite3 (``.db3``) bags must be converted first (``ros2 bag convert``
  or ``rosbags-convert``).

Errors are :class:`~prophrl_common.bag_error.BagError` (a ``ValueError``) naming the bag path and the problem.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml
from mcap.reader import SeekingReader
from mcap.records import Channel, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import MCAP0_MAGIC
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from prophrl_common.bag_error import BagError
from prophrl_data.bag_format import (
    CUSTOM_DATA_RECORD,
    ROSBAG2_METADATA_RECORD,
    BagMessage,
    TopicInfo,
    default_typestore,
    deserialize_cdr,
    normalize_msgtype,
)

# What reading a cut or damaged file raises: the mcap library's McapError and CRC errors, struct and
# decoding errors, zstandard's and lz4's own errors, and MemoryError when a corrupt length asks for an
# impossible allocation. Caught only around the library's reads, never around our own logic.
_DAMAGE = Exception


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
    "discover_bags",
    "is_bag",
    "open_bag",
]
