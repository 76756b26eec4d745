"""The imagination server's goal queue, session table, served model and goal checks, without a ROS graph."""

import threading
import time
import types

import numpy as np
import pytest

from prophrl_common.chunks import array_to_chunk
from prophrl_common.images import numpy_to_image
from prophrl_worldmodel.imagine_sessions import (Canceled, GoalError, GoalQueue, ServedModel, Session, SessionTable,
                                                  goal_chunks, goal_start)


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


def test_served_model_swaps_bump_the_generation():
    served = ServedModel("model-a", "ckpt/a")
    assert served.current() == ("model-a", 0)
    with served.lock:
        served.swap("model-b", "ckpt/b")
    assert served.current() == ("model-b", 1) and served.path == "ckpt/b"


def test_goal_chunks_and_start_are_checked_against_the_model():
    config = types.SimpleNamespace(action_horizon=4, action_dim=14, frames_per_clip=2, actions_per_frame=2)
    chunk = array_to_chunk(np.zeros((4, 7), np.float32), "ee_delta_7d", 0.1)
    assert [a.shape for a in goal_chunks(types.SimpleNamespace(chunks=[chunk, chunk]), config)] == [(4, 7)] * 2
    short = array_to_chunk(np.zeros((3, 7), np.float32), "ee_delta_7d", 0.1)
    with pytest.raises(GoalError, match="chunk 1 has horizon 3, but the world model executes exactly 4"):
        goal_chunks(types.SimpleNamespace(chunks=[chunk, short]), config)
    joints = array_to_chunk(np.zeros((4, 7), np.float32), "joint_position", 0.1)
    with pytest.raises(GoalError, match="chunk 0: action_space 'joint_position' cannot be imagined"):
        goal_chunks(types.SimpleNamespace(chunks=[joints]), config)
    wide = array_to_chunk(np.zeros((4, 14), np.float32), "ee_delta_14d", 0.1)
    with pytest.raises(GoalError, match=r"chunks mix action dims \[7, 14\]"):
        goal_chunks(types.SimpleNamespace(chunks=[chunk, wide]), config)

    frame = numpy_to_image(np.full((8, 8, 3), 7, np.uint8), "rgb8")
    goal = types.SimpleNamespace(context_frames=[frame, frame], start_ee_pose=[0.4, 0, 0.3, 0, 0, 0, 1],
                                 start_gripper=1.0, instruction="lift the cube")
    start = goal_start(goal)
    assert start.context_frames.shape == (2, 8, 8, 3) and start.instruction == "lift the cube" and start.gripper == 1.0
    with pytest.raises(GoalError, match="start_ee_pose must be empty or 7 values"):
        goal_start(types.SimpleNamespace(**{**vars(goal), "start_ee_pose": [0.0] * 3}))
    other = numpy_to_image(np.zeros((4, 8, 3), np.uint8), "rgb8")
    with pytest.raises(GoalError, match="context frame 1 is 8x4 rgb8, but frame 0 is 8x8 rgb8"):
        goal_start(types.SimpleNamespace(**{**vars(goal), "context_frames": [frame, other]}))
    with pytest.raises(GoalError, match="needs context_frames"):
        goal_start(types.SimpleNamespace(**{**vars(goal), "context_frames": []}))
