"""The imagination server's goal queue and session table, without ROS."""

import threading
import time

import pytest

from prophrl_worldmodel.imagine_sessions import Canceled, GoalError, GoalQueue, Session, SessionTable


class _Rollouts:
    def __init__(self, num_rollouts):
        self.num_rollouts = num_rollouts


def test_goals_are_served_one_at_a_time_in_arrival_order_and_a_full_queue_is_busy():
    queue, order = GoalQueue(max_queued=1), []
    first = queue.wait_turn()
    queued = []

    def goal(name):
        ticket = queue.wait_turn(on_queued=lambda: queued.append(name))
        order.append(name)
        queue.leave(ticket)
    second = threading.Thread(target=goal, args=("second",))
    second.start()
    deadline = time.monotonic() + 10
    while len(queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(GoalError, match=r"busy: 2 goal\(s\) running or queued \(max_queued_goals 1\)"):
        queue.wait_turn()
    queue.leave(first)
    second.join(timeout=10)
    assert order == ["second"] and queued == ["second"] and len(queue) == 0


def test_a_goal_canceled_while_queued_leaves_the_queue():
    queue = GoalQueue()
    first = queue.wait_turn()
    with pytest.raises(Canceled, match="while queued"):
        queue.wait_turn(is_canceled=lambda: True)
    assert len(queue) == 1
    queue.leave(first)
    queue.leave(queue.wait_turn(limit=False))
    assert len(queue) == 0


def test_sessions_open_continue_expire_and_close_with_a_model_swap():
    table = SessionTable(max_sessions=1, ttl_s=0.05)
    assert table.check_out("s1", 2, model_generation=0, can_open=True) is None   # to be opened
    session = Session(_Rollouts(2), "lift", 0, time.monotonic(), in_use=True)
    assert table.check_in("s1", session, keep=True, opened=True) == (1, 0)
    assert table.check_out("s1", 2, 0, can_open=False) is session and session.in_use
    with pytest.raises(GoalError, match="session 's1' has 2 rollouts, the goal 3"):
        table.check_out("s1", 3, 0, can_open=False)
    assert table.check_in("s1", session, keep=True, opened=False) == (0, 0)
    with pytest.raises(GoalError, match=r"1 sessions are open \(max_sessions 1\)"):
        table.check_out("s2", 2, 0, can_open=True)
    assert table.check_out("s1", 2, model_generation=1, can_open=True) is None, "a session of an older model"
    assert len(table) == 0
    table.check_in("s1", Session(_Rollouts(2), "lift", 1, time.monotonic()), keep=True, opened=True)
    time.sleep(0.1)
    assert table.expire() == ["s1"] and len(table) == 0
    with pytest.raises(GoalError, match="unknown session 's1'"):
        table.check_out("s1", 2, 1, can_open=False)
    failed = Session(_Rollouts(2), "lift", 1, time.monotonic())
    table.check_in("s3", failed, keep=True, opened=True)
    assert table.check_in("s3", failed, keep=False, opened=False) == (0, 1), "a failed goal closes its session"
    assert table.check_out("", 2, 1, can_open=False) is None, "one-shot goals have no session"
