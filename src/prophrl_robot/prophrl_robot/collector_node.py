"""Collector node: the CollectEpisode action — run one episode and return its rosbag2 bag.

For each goal it starts an episode (sim: sets the sim node's `seed` parameter, or calls its
reset service; real robot: publishes the START event itself), waits for the task's SUCCESS event
or `max_duration_s` (then it publishes FAILURE), and returns the bag the recorder node closed
(announced on the recorder's `~/last_bag`). Feedback: elapsed time and chunks seen.

Before its first episode it waits until the sim and the recorder have announced that they are
ready (prophrl_common.startup), and waits for their answers, as long as the start-up timeout
(PROPHRL_STARTUP_TIMEOUT_S): a cold sim is still building its scene long after its services are
visible.

Parameters: CollectorNodeParameters. With use_sim_time, max_duration_s is sim time (/clock): a sim slowed down
by a loaded machine gets the same number of steps.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import uuid

from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String
from std_srvs.srv import Trigger

from prophrl_common.node_clock import node_seconds, uses_sim_time
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.startup import ReadyWatcher, startup_timeout_s
from prophrl_msgs.action import CollectEpisode
from prophrl_msgs.msg import ActionChunk, EpisodeEvent

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclasses.dataclass(frozen=True)
class CollectorNodeParameters:
    sim_node: str = parameter("/sim", "node name of the simulated arm (its seed parameter and ~/reset start "
                                      "episodes); empty on a real robot, where the collector publishes START itself")
    recorder_last_bag_topic: str = parameter("/recorder/last_bag", "where the recorder announces every closed bag",
                                             required=True)
    robot: str = parameter("panda_sim", "robot name written into the episode events")
    task: str = parameter("", "task name written into the episode events")
    bag_timeout_s: float = parameter(60.0, "how long to wait for the recorder's bag after the episode ended (it "
                                           "writes the last messages first; seconds on a busy machine)",
                                     minimum=0.0, exclusive_minimum=True)


class CollectorNode(Node):
    def __init__(self):
        super().__init__("collector")
        declare_parameters(self, CollectorNodeParameters)
        params = read_parameters(self, CollectorNodeParameters)
        self.sim_node = params.sim_node.rstrip("/")
        self.robot, self.task, self.bag_timeout_s = params.robot, params.task, params.bag_timeout_s
        last_bag_topic = params.recorder_last_bag_topic
        self.recorder_name = last_bag_topic.strip("/").split("/")[0]
        self._recording_ready = False
        self.stopping = threading.Event()
        self.startup_timeout_s = startup_timeout_s()
        group = ReentrantCallbackGroup()
        self._ready = ReadyWatcher(self, callback_group=group)
        self._lock = threading.Lock()
        self._events: list[EpisodeEvent] = []
        self._bags: list[str] = []
        self._chunks = 0
        self.create_subscription(EpisodeEvent, "/prophrl/episode", self._on_event, 50, callback_group=group)
        self.create_subscription(String, last_bag_topic, self._on_bag, LATCHED, callback_group=group)
        self.create_subscription(ActionChunk, "/prophrl/action_chunk", self._on_chunk, 50, callback_group=group)
        self.episode_pub = self.create_publisher(EpisodeEvent, "/prophrl/episode", 10)
        if self.sim_node:
            self.reset_client = self.create_client(Trigger, f"{self.sim_node}/reset", callback_group=group)
            self.param_client = self.create_client(SetParameters, f"{self.sim_node}/set_parameters",
                                                   callback_group=group)
        self.server = ActionServer(self, CollectEpisode, "~/collect_episode", self._execute, callback_group=group,
                                   cancel_callback=lambda _goal: CancelResponse.ACCEPT)

    def _on_event(self, msg: EpisodeEvent) -> None:
        with self._lock:
            self._events.append(msg)

    def _on_bag(self, msg: String) -> None:
        with self._lock:
            self._bags.append(msg.data)

    def _on_chunk(self, _msg: ActionChunk) -> None:
        with self._lock:
            self._chunks += 1

    def stop(self) -> None:
        """The node is going away: a running goal ends (aborted) instead of waiting on."""
        self.stopping.set()

    def _wait_for(self, predicate, timeout_s: float, goal_handle=None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            if goal_handle is not None and goal_handle.is_cancel_requested:
                return False
            if self.stopping.is_set():
                raise RuntimeError("the collector is shutting down")
            time.sleep(0.02)
        with self._lock:
            return predicate()

    def _call(self, client, request):
        if not self._wait_for(client.service_is_ready, self.startup_timeout_s):
            raise RuntimeError(f"service {client.srv_name} is not available (waited {self.startup_timeout_s:g} s)")
        future = client.call_async(request)
        if not self._wait_for(future.done, self.startup_timeout_s):
            raise RuntimeError(f"service {client.srv_name} did not answer within {self.startup_timeout_s:g} s")
        return future.result()

    def _wait_until_peers_ready(self) -> None:
        """The sim (when there is one) and the recorder have announced that they are ready."""
        peers = ([self.sim_node] if self.sim_node else []) + [self.recorder_name]
        if self._ready.missing(peers):
            self.get_logger().info(f"waiting for {', '.join(self._ready.missing(peers))} to come up")
        if not self._wait_for(lambda: not self._ready.missing(peers), self.startup_timeout_s):
            raise RuntimeError(f"{', '.join(self._ready.missing(peers))} did not come up within "
                               f"{self.startup_timeout_s:g} s (PROPHRL_STARTUP_TIMEOUT_S)")

    def _recorder_subscribes(self, topic: str) -> bool:
        return any(info.node_name == self.recorder_name for info in self.get_subscriptions_info_by_topic(topic))

    def _wait_until_recording_ready(self) -> None:
        """The recorder subscribes a topic once it has discovered its publisher: when it records the
        camera, it also hears the sim's episode events (a START sent earlier would be lost)."""
        self._wait_until_peers_ready()
        topics = ["/prophrl/episode"] + (["/camera/image_raw"] if self.sim_node else [])
        if not self._wait_for(lambda: all(self._recorder_subscribes(t) for t in topics), self.startup_timeout_s):
            raise RuntimeError(f"the recorder ({self.recorder_name}) is not subscribed to {topics}")
        time.sleep(0.5)  # let the last endpoints match
        self._recording_ready = True

    def _start_episode(self, goal) -> str:
        """Start an episode; return its id once the START event has been seen."""
        with self._lock:
            seen = len(self._events)
        if not self.sim_node:
            episode_id = uuid.uuid4().hex[:12]
            self._publish(EpisodeEvent.START, episode_id, goal.instruction, False, "collector")
            return episode_id
        if goal.seed >= 0:
            request = SetParameters.Request(parameters=[Parameter("seed", value=int(goal.seed)).to_parameter_msg()])
            result = self._call(self.param_client, request).results[0]
            if not result.successful:
                raise RuntimeError(f"sim refused seed {goal.seed}: {result.reason}")
        else:
            self._call(self.reset_client, Trigger.Request())

        def started():
            return any(e.event == EpisodeEvent.START for e in self._events[seen:])
        if not self._wait_for(started, self.startup_timeout_s):
            raise RuntimeError("the sim did not announce the new episode")
        with self._lock:
            return next(e.episode_id for e in self._events[seen:] if e.event == EpisodeEvent.START)

    def _publish(self, kind: int, episode_id: str, instruction: str, success: bool, message: str) -> None:
        event = EpisodeEvent(event=kind, episode_id=episode_id, instruction=instruction, robot=self.robot,
                             task=self.task, success=success, message=message)
        event.header.stamp = self.get_clock().now().to_msg()
        self.episode_pub.publish(event)

    def _execute(self, goal_handle):
        goal = goal_handle.request
        result = CollectEpisode.Result()
        try:
            with self._lock:
                bags_before = len(self._bags)
                chunks_before = self._chunks
            if not self._recording_ready:
                self._wait_until_recording_ready()
            episode_id = self._start_episode(goal)
            if uses_sim_time(self) and not self._wait_for(lambda: self.get_clock().now().nanoseconds > 0, 10.0):
                raise RuntimeError("no /clock received (use_sim_time is set: is the sim publishing its clock?)")
            start = node_seconds(self)
            with self._lock:
                first_event = len(self._events)

            def outcome():
                """True / False once the episode succeeded / an operator marked it failed, else None."""
                for e in self._events[first_event:]:
                    if e.episode_id == episode_id and e.event in (EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE):
                        return e.event == EpisodeEvent.SUCCESS
                return None
            success = False
            while node_seconds(self) - start < goal.max_duration_s and not goal_handle.is_cancel_requested:
                if self._wait_for(lambda: outcome() is not None, 0.2):
                    with self._lock:
                        success = outcome()
                    break
                with self._lock:
                    chunks = self._chunks - chunks_before
                goal_handle.publish_feedback(CollectEpisode.Feedback(elapsed_s=node_seconds(self) - start,
                                                                     num_steps=chunks))
            # The recorder closes the bag on SUCCESS/FAILURE/STOP; a SUCCESS it already saw is harmless to repeat.
            self._publish(EpisodeEvent.SUCCESS if success else EpisodeEvent.FAILURE, episode_id, goal.instruction,
                          success, "" if success else "timeout" if not goal_handle.is_cancel_requested else "canceled")
            if not self._wait_for(lambda: len(self._bags) > bags_before, self.bag_timeout_s):
                raise RuntimeError("the recorder did not report a bag (is recorder_node running?)")
            with self._lock:
                result.bag_path = self._bags[-1]
                result.num_steps = self._chunks - chunks_before
            result.success = success
            result.message = f"episode {episode_id}"
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
            else:
                goal_handle.succeed()
        except RuntimeError as exc:
            result.success = False
            result.message = str(exc)
            self.get_logger().error(f"CollectEpisode failed: {exc}")
            goal_handle.abort()
        return result


def main(args=None) -> int:
    return run_node(CollectorNode, args, executor=lambda _node: MultiThreadedExecutor(num_threads=4),
                    before_destroy=CollectorNode.stop)


if __name__ == "__main__":
    sys.exit(main())
