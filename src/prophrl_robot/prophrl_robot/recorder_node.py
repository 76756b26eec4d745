"""Episode recorder: one rosbag2 bag (MCAP storage) per episode, written off the callback thread.

A thin rclpy adapter around :mod:`prophrl_data.bag_writer` (the file format, crash tolerance and
recovery live there and in :mod:`prophrl_data.bag_format` and :mod:`prophrl_data.bag_reader`).

Run: ``ros2 run prophrl_robot recorder_node`` (or the console script ``recorder_node``, or
``python -m prophrl_robot.recorder_node``); params file: ``config/nodes/recorder_node.yaml``.

* Records the topics in parameter ``topics`` (``"name"`` or ``"name:package/msg/Type"``; by default
  the camera image and camera_info, ``/joint_states``, ``/prophrl/ee_pose``,
  ``/prophrl/action_chunk``, ``/prophrl/instruction`` and ``/prophrl/episode``). Like
  ``ros2 bag record``, a topic is subscribed once it has a publisher, with the publishers' QoS
  (reliable unless one is best-effort, transient-local if all are), and its type from the graph
  when none is given. Messages are taken as raw CDR from the wire (a wire message can end in padding
  bytes; the bag writer stores canonical CDR) and stamped with the receive time (MCAP log_time) and
  their header stamp (publish_time).
* ``/prophrl/episode`` (prophrl_msgs/EpisodeEvent): START opens ``<output_dir>/<episode_id>/``
  (a START while recording first closes the current bag); SUCCESS, FAILURE and STOP close it.
  The services ``~/start`` and ``~/stop`` (std_srvs/Trigger) do the same; their reply message is
  the bag path. The bag's rosbag2 ``custom_data`` holds episode_id, instruction, robot, task
  (from the event, else the last ``/prophrl/instruction`` and the ``robot``/``task`` parameters),
  then success, end_reason and message at close.
* The last message of every transient-local topic (e.g. the latched instruction) is written at
  the start of each bag, so every bag is self-contained: right after the START event, with the
  START's receive time as its log time (its header stamp stays its publish time). No message of a
  bag is logged before its START.
* Times are the node's clock: with ``use_sim_time`` the sim's /clock, so a sim that falls behind
  real time under load still gives bags at its exact rates. A /clock message can reach this node
  after a message its source stamped at that time: a message is never logged before its stamp then
  (and a recorder more than a whole step behind logs a message at the step it caught up in).
* Disk I/O runs on a writer thread behind a queue: callbacks only enqueue. When more than
  ``queue_size`` messages are waiting, new ones are dropped and counted (logged, and stored as
  ``dropped_messages`` in the bag's custom_data). Data reaches the file at least every
  ``flush_period_s``, so a killed recorder loses at most about that much (see prophrl_data.bag_reader).
* After each bag is closed its path is logged and published on ``~/last_bag``
  (std_msgs/String, transient-local).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import queue
import re
import sys
import threading
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import String
from std_srvs.srv import Trigger

from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.bag_error import BagError
from prophrl_data.bag_format import TopicQos, cdr_header_stamp_ns, default_typestore, normalize_msgtype
from prophrl_data.bag_writer import DEFAULT_CHUNK_SIZE_BYTES, DEFAULT_FLUSH_PERIOD_S, BagWriter
from prophrl_msgs.msg import EpisodeEvent

DEFAULT_TOPICS = (
    "/camera/image_raw:sensor_msgs/msg/Image",
    "/camera/camera_info:sensor_msgs/msg/CameraInfo",
    "/camera/pose:geometry_msgs/msg/PoseStamped",
    "/joint_states:sensor_msgs/msg/JointState",
    "/prophrl/ee_pose:geometry_msgs/msg/PoseStamped",
    "/prophrl/action_chunk:prophrl_msgs/msg/ActionChunk",
    "/prophrl/instruction:std_msgs/msg/String",
    "/prophrl/episode:prophrl_msgs/msg/EpisodeEvent",
)
END_EVENTS = {EpisodeEvent.SUCCESS: "SUCCESS", EpisodeEvent.FAILURE: "FAILURE", EpisodeEvent.STOP: "STOP"}
EPISODE_MSGTYPE = "prophrl_msgs/msg/EpisodeEvent"
INSTRUCTION_MSGTYPE = "std_msgs/msg/String"


@dataclasses.dataclass
class RecordedTopic:
    name: str
    msgtype: str = ""  # empty until known (configured, or discovered from the graph)
    record: bool = True  # False for a control topic (episode/instruction) that is not in `topics`
    qos: TopicQos | None = None
    has_header: bool = False
    subscribed: bool = False
    unavailable: bool = False  # its message type cannot be imported here: never subscribed


def parse_topic_spec(spec: str) -> RecordedTopic:
    """'/name' or '/name:package/msg/Type'."""
    name, _, msgtype = spec.strip().partition(":")
    if not name.startswith("/"):
        raise ValueError(f"topic {spec!r}: give an absolute name ('/camera/image_raw[:sensor_msgs/msg/Image]')")
    return RecordedTopic(name, normalize_msgtype(msgtype) if msgtype else "")


def message_class(msgtype: str):
    package, interface, name = normalize_msgtype(msgtype).split("/")
    return getattr(importlib.import_module(f"{package}.{interface}"), name)


def starts_with_header(msg_class) -> bool:
    fields = iter(msg_class.get_fields_and_field_types().items())
    return next(fields, None) == ("header", "std_msgs/Header")


@dataclasses.dataclass
class _Open:
    path: Path
    custom_data: dict[str, str]


@dataclasses.dataclass
class _Write:
    topic: RecordedTopic
    data: bytes
    log_time_ns: int
    publish_time_ns: int


@dataclasses.dataclass
class _UpdateCustomData:
    custom_data: dict[str, str]


@dataclasses.dataclass
class _Close:
    custom_data: dict[str, str]


class BagWriterThread:
    """Owns the BagWriter; callers enqueue open/write/close and never wait for the disk."""

    def __init__(self, logger, on_closed, max_queued_messages: int, chunk_size_bytes: int, flush_period_s: float):
        self._logger = logger
        self._on_closed = on_closed
        self._max_queued = max_queued_messages
        self._chunk_size_bytes = chunk_size_bytes
        self._flush_period_s = flush_period_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued_messages = 0
        self._lock = threading.Lock()
        self._bag: BagWriter | None = None  # only touched by the writer thread
        self._unrecordable_topics: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="bag_writer", daemon=True)
        self._thread.start()

    def open(self, path: Path, custom_data: dict[str, str]) -> None:
        self._queue.put(_Open(path, custom_data))

    def write(self, topic: RecordedTopic, data: bytes, log_time_ns: int, publish_time_ns: int) -> bool:
        """Enqueue one message; False when the queue is full (the message is dropped)."""
        with self._lock:
            if self._queued_messages >= self._max_queued:
                return False
            self._queued_messages += 1
        self._queue.put(_Write(topic, data, log_time_ns, publish_time_ns))
        return True

    def update_custom_data(self, custom_data: dict[str, str]) -> None:
        self._queue.put(_UpdateCustomData(custom_data))

    def close(self, custom_data: dict[str, str]) -> None:
        self._queue.put(_Close(custom_data))

    def stop(self, timeout_s: float) -> bool:
        """Finish everything queued, then end the thread; False if it did not finish in time."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._flush_period_s)
            except queue.Empty:
                self._with_bag(BagWriter.flush)
                continue
            if item is None:
                self._finish({"end_reason": "recorder stopped", "success": "false"})
                return
            if isinstance(item, _Write):
                with self._lock:
                    self._queued_messages -= 1
                self._with_bag(self._write, item)
            elif isinstance(item, _Open):
                self._finish({"end_reason": "superseded by a new episode", "success": "false"})
                self._open(item)
            elif isinstance(item, _UpdateCustomData):
                self._with_bag(BagWriter.set_custom_data, item.custom_data)
            elif isinstance(item, _Close):
                self._finish(item.custom_data)

    def _open(self, item: _Open) -> None:
        try:
            self._bag = BagWriter(item.path, item.custom_data, chunk_size_bytes=self._chunk_size_bytes,
                                  flush_period_s=self._flush_period_s)
        except (OSError, ValueError) as exc:
            self._logger.error(f"cannot start bag {item.path}: {exc}; this episode is not recorded")

    def _write(self, bag: BagWriter, item: _Write) -> None:
        topic = item.topic
        if topic.name in self._unrecordable_topics:
            return
        try:
            bag.add_topic(topic.name, topic.msgtype, topic.qos or TopicQos())
        except BagError as exc:  # a type without a definition here: skip the topic, keep the bag
            self._unrecordable_topics.add(topic.name)
            self._logger.error(f"not recording {topic.name}: {exc}")
            return
        bag.write(topic.name, item.data, item.log_time_ns, item.publish_time_ns)

    def _with_bag(self, action, *args) -> None:
        """action(open bag, *args); on a disk error give the bag up (what reached the file stays readable)."""
        if self._bag is None:
            return
        try:
            action(self._bag, *args)
        except (OSError, ValueError) as exc:
            self._logger.error(f"writing bag {self._bag.path} failed: {exc}; the rest of this episode is not recorded")
            with contextlib.suppress(OSError, ValueError):
                self._bag.close()
            self._bag = None

    def _finish(self, custom_data: dict[str, str]) -> None:
        if self._bag is None:
            return
        bag, self._bag = self._bag, None
        try:
            bag.set_custom_data(custom_data)
            bag.close()
        except (OSError, ValueError) as exc:
            self._logger.error(f"closing bag {bag.path} failed: {exc}")
            return
        self._on_closed(bag.path, bag.message_count, bag.custom_data)


@dataclasses.dataclass(frozen=True)
class RecorderNodeParameters:
    output_dir: str = parameter("data/bags", "one bag directory per episode: <output_dir>/<episode_id>/ (relative "
                                             "to the working directory)", required=True)
    topics: tuple[str, ...] = parameter(DEFAULT_TOPICS, '"name" (type taken from the graph) or '
                                        '"name:package/msg/Type"; a topic is subscribed once it has a publisher, '
                                        "with the publishers' QoS (as `ros2 bag record` does)")
    episode_topic: str = parameter("/prophrl/episode", "EpisodeEvent START opens a bag; SUCCESS / FAILURE / STOP "
                                                       "close it (also ~/start, ~/stop)", required=True)
    instruction_topic: str = parameter("/prophrl/instruction", "the latest instruction goes into the bag metadata "
                                                               "when the START event has none", required=True)
    robot: str = parameter("", "bag metadata when the START event leaves it empty")
    task: str = parameter("", "bag metadata when the START event leaves it empty")
    queue_size: int = parameter(2000, "messages waiting for the writer thread before new ones are dropped (and "
                                      "counted)", minimum=1)
    flush_period_s: float = parameter(DEFAULT_FLUSH_PERIOD_S, "data reaches the file at least this often: a killed "
                                                              "recorder loses at most about this much",
                                      minimum=0.0, exclusive_minimum=True)
    chunk_size_kib: int = parameter(DEFAULT_CHUNK_SIZE_BYTES // 1024, "MCAP chunk size", minimum=1)
    subscription_depth: int = parameter(1000, "DDS reader history per topic (KEEP_LAST): a burst longer than this "
                                              "is overwritten before the callbacks see it and is NOT counted as "
                                              "dropped", minimum=1)
    discovery_period_s: float = parameter(0.2, "how often the graph is searched for publishers of the topics",
                                          minimum=0.0, exclusive_minimum=True)


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        declare_parameters(self, RecorderNodeParameters)
        params = read_parameters(self, RecorderNodeParameters)
        self.output_dir = Path(params.output_dir)
        topic_specs = list(params.topics)
        episode_topic, instruction_topic = params.episode_topic, params.instruction_topic
        self.robot, self.task = params.robot, params.task
        max_queued, flush_period_s, chunk_size_kib = params.queue_size, params.flush_period_s, params.chunk_size_kib
        self.subscription_depth, discovery_period_s = params.subscription_depth, params.discovery_period_s

        self.topics: dict[str, RecordedTopic] = {}
        for spec in topic_specs:
            topic = parse_topic_spec(spec)
            self.topics[topic.name] = topic
        for name, msgtype in ((episode_topic, EPISODE_MSGTYPE), (instruction_topic, INSTRUCTION_MSGTYPE)):
            topic = self.topics.setdefault(name, RecordedTopic(name, msgtype, record=False))
            if topic.msgtype and topic.msgtype != msgtype:
                raise ValueError(f"topic {name} must have type {msgtype}, not {topic.msgtype}")
            topic.msgtype = msgtype
        self.episode_topic, self.instruction_topic = episode_topic, instruction_topic

        default_typestore()  # parse the message definitions now, not when the first episode starts
        self._writer = BagWriterThread(self.get_logger(), self._on_bag_closed, max_queued,
                                       chunk_size_kib * 1024, flush_period_s)
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._episode: dict[str, str] | None = None  # the open bag's custom_data
        self._episode_start_ns = 0  # the open bag's START receive time
        self._bag_path: Path | None = None
        self._used_paths: set[Path] = set()
        self._latched: dict[str, _Write] = {}  # last message of each transient-local topic
        self._instruction = ""
        self._dropped_in_episode = 0
        self._last_bag_publisher = self.create_publisher(
            String, "~/last_bag", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                              reliability=ReliabilityPolicy.RELIABLE))
        self.create_service(Trigger, "~/start", self._start_service)
        self.create_service(Trigger, "~/stop", self._stop_service)
        self._discovery_timer = self.create_timer(discovery_period_s, self._subscribe_discovered_topics)
        self._subscribe_discovered_topics()
        self.get_logger().info(f"recording {sorted(n for n, t in self.topics.items() if t.record)}"
                               f" into {self.output_dir.resolve()} on each episode")

    # -- subscriptions ---------------------------------------------------------------------------
    def _subscribe_discovered_topics(self) -> None:
        pending = [topic for topic in self.topics.values() if not (topic.subscribed or topic.unavailable)]
        for topic in pending:
            publishers = self.get_publishers_info_by_topic(topic.name)
            if not publishers:
                continue
            types = {normalize_msgtype(info.topic_type) for info in publishers}
            if not topic.msgtype:
                if len(types) != 1:
                    self.get_logger().warning(f"{topic.name} is published with several types {sorted(types)}:"
                                              " give one in `topics` (name:type)", once=True)
                    continue
                topic.msgtype = types.pop()
            elif topic.msgtype not in types:
                self.get_logger().error(f"{topic.name} is published as {sorted(types)}, configured as"
                                        f" {topic.msgtype}: not recorded", once=True)
                continue
            try:
                self._subscribe(topic, publishers)
            except (ImportError, AttributeError) as exc:
                topic.unavailable = True
                self.get_logger().error(f"cannot record {topic.name}: type {topic.msgtype} is not importable ({exc})")
        if all(topic.subscribed or topic.unavailable for topic in self.topics.values()):
            self._discovery_timer.cancel()

    def _subscribe(self, topic: RecordedTopic, publishers) -> None:
        msg_class = message_class(topic.msgtype)
        reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
        transient_local = all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers)
        offered_depth = max(max(p.qos_profile.depth for p in publishers), 1)
        topic.qos = TopicQos(reliable=reliable, transient_local=transient_local, depth=offered_depth)
        topic.has_header = starts_with_header(msg_class)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.subscription_depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE)
        if topic.name == self.episode_topic:
            self.create_subscription(msg_class, topic.name, lambda msg: self._on_episode_event(topic, msg), qos)
        elif topic.name == self.instruction_topic:
            self.create_subscription(msg_class, topic.name, lambda msg: self._on_instruction(topic, msg), qos)
        else:
            self.create_subscription(msg_class, topic.name, lambda data: self._on_message(topic, data), qos, raw=True)
        topic.subscribed = True
        self.get_logger().info(f"subscribed {topic.name} ({topic.msgtype},"
                               f" {'reliable' if reliable else 'best-effort'},"
                               f" {'transient-local' if transient_local else 'volatile'})")

    # -- callbacks (never touch the disk) --------------------------------------------------------
    def _received(self, topic: RecordedTopic, data: bytes) -> _Write:
        """The message with its receive time (log time) and header stamp (publish time)."""
        receive_ns = self.get_clock().now().nanoseconds
        if not topic.has_header:
            return _Write(topic, data, receive_ns, receive_ns)
        stamp_ns = max(cdr_header_stamp_ns(data), 0)
        if self._sim_time and stamp_ns > receive_ns:
            receive_ns = stamp_ns  # stamped by the clock's source: its /clock has not been processed here yet
        return _Write(topic, data, receive_ns, stamp_ns)

    def _on_message(self, topic: RecordedTopic, data: bytes) -> None:
        item = self._received(topic, data)
        if topic.qos.transient_local:
            self._latched[topic.name] = item
        if self._episode is not None and topic.record:
            self._record(item)

    def _record(self, item: _Write) -> None:
        log_time_ns = max(item.log_time_ns, self._episode_start_ns)  # a bag never starts before its START
        if not self._writer.write(item.topic, item.data, log_time_ns, item.publish_time_ns):
            self._dropped_in_episode += 1
            self.get_logger().warning(f"bag writer is behind: dropped {self._dropped_in_episode} messages in this"
                                      " episode (raise queue_size or use a faster disk)", throttle_duration_sec=2.0)

    def _on_instruction(self, topic: RecordedTopic, msg: String) -> None:
        self._instruction = msg.data
        if self._episode is not None and not self._episode["instruction"]:
            self._episode["instruction"] = msg.data
            self._writer.update_custom_data({"instruction": msg.data})
        self._on_message(topic, serialize_message(msg))

    def _on_episode_event(self, topic: RecordedTopic, event: EpisodeEvent) -> None:
        if event.event == EpisodeEvent.START:
            self._start_episode(event, self._received(topic, serialize_message(event)))
        elif event.event in END_EVENTS:
            self._on_message(topic, serialize_message(event))
            success = event.event == EpisodeEvent.SUCCESS or (event.event == EpisodeEvent.STOP and event.success)
            self._end_episode(END_EVENTS[event.event], success, event.message)
        else:
            self._on_message(topic, serialize_message(event))

    def _start_service(self, _request, response):
        response.message = str(self._start_episode(EpisodeEvent(event=EpisodeEvent.START), None))
        response.success = True
        return response

    def _stop_service(self, _request, response):
        if self._episode is None:
            response.success, response.message = False, "not recording"
            return response
        response.message = str(self._bag_path)
        self._end_episode("stop service", False, "")
        response.success = True
        return response

    # -- episodes --------------------------------------------------------------------------------
    def _start_episode(self, event: EpisodeEvent, start: _Write | None) -> Path:
        """Open a bag: the START event (None: started by the service) first, then the latched messages,
        all at the START's receive time."""
        if self._episode is not None:
            self._end_episode("superseded by a new START", False, "")
        self._episode_start_ns = start.log_time_ns if start is not None else self.get_clock().now().nanoseconds
        episode_id = event.episode_id or time.strftime("episode_%Y%m%d_%H%M%S")
        self._bag_path = self._unused_bag_path(re.sub(r"[^A-Za-z0-9_.-]", "_", episode_id))
        self._episode = {
            "episode_id": episode_id,
            "instruction": event.instruction or self._instruction,
            "robot": event.robot or self.robot,
            "task": event.task or self.task,
            "recorder": self.get_fully_qualified_name(),
        }
        self._writer.open(self._bag_path, dict(self._episode))
        if start is not None and start.topic.record:
            self._record(start)
        for item in self._latched.values():
            if item.topic.record and item.topic.name != self.episode_topic:
                self._record(dataclasses.replace(item, log_time_ns=self._episode_start_ns))
        self.get_logger().info(f"episode {episode_id!r} started: recording {self._bag_path}")
        return self._bag_path

    def _end_episode(self, reason: str, success: bool, message: str) -> None:
        if self._episode is None:
            return
        self._writer.close({**self._episode, "success": "true" if success else "false", "end_reason": reason,
                            "message": message, "dropped_messages": str(self._dropped_in_episode)})
        self._episode = None
        self._dropped_in_episode = 0

    def _unused_bag_path(self, name: str) -> Path:
        path, suffix = self.output_dir / name, 1
        while path in self._used_paths or path.exists():
            path, suffix = self.output_dir / f"{name}_{suffix}", suffix + 1
        self._used_paths.add(path)
        return path

    def _on_bag_closed(self, path: Path, message_count: int, custom_data: dict[str, str]) -> None:
        """Called on the writer thread."""
        self.get_logger().info(f"closed bag {path} ({message_count} messages, success={custom_data.get('success')},"
                               f" {custom_data.get('end_reason')})")
        self._last_bag_publisher.publish(String(data=str(path)))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Close the open bag and wait for the writer to finish."""
        self._end_episode("shutdown", False, "")
        if not self._writer.stop(timeout_s):
            self.get_logger().error(f"the bag writer did not finish within {timeout_s} s")


def main(args: list[str] | None = None) -> int:
    return run_node(RecorderNode, args, spin_timeout_s=0.05, before_destroy=RecorderNode.shutdown)


if __name__ == "__main__":
    sys.exit(main())
