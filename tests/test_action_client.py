"""Goals sent from a worker thread while an executor thread spins (how the trainer node drives imagination
servers) all get their goal response. The sending thread is made to lose the CPU right after a goal leaves,
until the executor has processed its response: the window that a loaded machine opens at random. With the
pinned rclpy's ActionClient the future it returns then never completes; ThreadSafeActionClient's does."""

import threading

import pytest
import rclpy
import rclpy.action.client
from rclpy.action import ActionClient, ActionServer
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

import prophrl_common.action_client
from prophrl_common.action_client import ThreadSafeActionClient
from prophrl_msgs.action import CollectEpisode



class _PreemptedAfterSend(Future):
    """A future whose construction first waits until the future the same thread made before it is done, as if
    the thread had been descheduled for that long; a send that makes one future per goal only waits for the
    previous goal, which has finished."""

    _last = threading.local()

    def __init__(self, *args, **kwargs):
        previous = getattr(self._last, "future", None)
        if previous is not None:
            previous_done = threading.Event()
            previous.add_done_callback(lambda _f: previous_done.set())
            previous_done.wait(30.0)
        super().__init__(*args, **kwargs)
        self._last.future = self


@pytest.fixture
def action_graph():
    context = rclpy.Context()
    rclpy.init(context=context)
    server_node = Node("goal_race_server", context=context)
    client_node = Node("goal_race_client", context=context)
    group = ReentrantCallbackGroup()

    def execute(handle):
        handle.succeed()
        return CollectEpisode.Result(success=True)

    server = ActionServer(server_node, CollectEpisode, "goal_race", execute, callback_group=group)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(server_node)
    executor.add_node(client_node)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    yield client_node, group
    executor.shutdown()
    spinning.join(5)
    server.destroy()
    server_node.destroy_node()
    client_node.destroy_node()
    rclpy.shutdown(context=context)


def _goal_responses(client, monkeypatch, goals: int, wait_s: float) -> int:
    """How many of `goals` goals, sent one after another from this thread, get their goal response within
    wait_s each."""
    assert client.wait_for_server(timeout_sec=30)
    monkeypatch.setattr(rclpy.action.client, "Future", _PreemptedAfterSend)
    monkeypatch.setattr(prophrl_common.action_client, "Future", _PreemptedAfterSend)
    answered = 0
    for _ in range(goals):
        responded = threading.Event()
        client.send_goal_async(CollectEpisode.Goal(task="lift")).add_done_callback(lambda _f: responded.set())
        answered += responded.wait(wait_s)
    _PreemptedAfterSend._last.future = None
    return answered


def test_goal_responses_arrive_when_the_sender_is_preempted_after_sending(action_graph, monkeypatch):
    node, group = action_graph
    client = ThreadSafeActionClient(node, CollectEpisode, "goal_race", callback_group=group)
    assert _goal_responses(client, monkeypatch, 3, wait_s=30.0) == 3
    client.destroy()


def test_the_pinned_rclpy_action_client_loses_those_goal_responses(action_graph, monkeypatch):
    """The reason ThreadSafeActionClient exists: fails once rclpy registers each goal's future once."""
    node, group = action_graph
    client = ActionClient(node, CollectEpisode, "goal_race", callback_group=group)
    assert _goal_responses(client, monkeypatch, 1, wait_s=3.0) == 0
    client.destroy()
