"""The trainer's RolloutBackend and RolloutScorer over ROS 2 (rclpy clients; used by trainer_node).

ImagineClientBackend drives imagination servers (prophrl_msgs/Imagine) closed loop, one chunk per goal,
with sessions: a group's first goal opens session `<uuid>` from the start's context frames, end-effector
pose, gripper and seed; every later goal names the session and continues each rollout from its own
last frame, history and integrated pose; closing sends a goal naming the session with num_rollouts 0.
Several servers may be listed: groups are assigned round-robin and all groups' goals of one chunk are in
flight together (at most `max_in_flight` per server, below the server's max_queued_goals + 1, so it
never answers "busy"; if it does anyway, e.g. a second trainer shares it, the goal is retried).

ScoreRolloutClient asks a reward judge service (prophrl_msgs/ScoreRollout) about every clip, requests
in flight together, and returns its probabilities and its own success decisions.

Both block the calling thread (the trainer's worker thread) on futures that the node's executor,
spinning in another thread, completes: never call them from an executor callback. Goals leave through
ThreadSafeActionClient, whose futures survive a response that the executor processes before send_goal_async
returns.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Sequence

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup

from prophrl_common.action_client import ThreadSafeActionClient
from prophrl_common.chunks import POLICY_STATE_DIM, array_to_chunk
from prophrl_common.images import numpy_to_image, to_rgb8
from prophrl_msgs.action import Imagine
from prophrl_msgs.srv import ScoreRollout
from prophrl_trainer.rollouts import RolloutGroup, start_frames, start_state
from prophrl_worldmodel.imagination import ImaginationStart


class RemoteError(RuntimeError):
    """A server answered with a failure, or did not answer in time."""


@dataclasses.dataclass
class _Session:
    session_id: str
    server: int
    start: ImaginationStart
    seed: int
    opened: bool = False


class _Call:
    """One request in flight: a threading.Event set by the executor thread when it is answered; `waiting_for`
    says what it waits for (named in a timeout)."""

    def __init__(self, waiting_for: str):
        self.done = threading.Event()
        self.value = None
        self.error: str | None = None
        self.waiting_for = waiting_for

    def finish(self, value=None, error: str | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()


def _wait(calls: Sequence[_Call], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    for call in calls:
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            raise RemoteError(f"{what}: no answer within {timeout_s:g} s (still waiting for {call.waiting_for})")


class ImagineClientBackend:
    """RolloutBackend over one or more Imagine action servers."""

    def __init__(self, node, action_names: Sequence[str], action_horizon: int, *, control_period_s: float = 0.05,
                 num_steps: int = 0, goal_timeout_s: float = 600.0, max_in_flight: int = 2, busy_retries: int = 50):
        if not action_names:
            raise ValueError("at least one Imagine action name is needed")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.node = node
        self.names = list(action_names)
        self.action_horizon = int(action_horizon)
        self.control_period_s = float(control_period_s)
        self.num_steps = int(num_steps)
        self.goal_timeout_s = float(goal_timeout_s)
        self.busy_retries = int(busy_retries)
        group = ReentrantCallbackGroup()
        self.clients = [ThreadSafeActionClient(node, Imagine, name, callback_group=group) for name in self.names]
        self._slots = [threading.BoundedSemaphore(max_in_flight) for _ in self.names]
        self._next_server = 0
        self.goals_sent = [0] * len(self.names)

    def wait_for_servers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for name, client in zip(self.names, self.clients):
            if not client.wait_for_server(timeout_sec=max(0.0, deadline - time.monotonic())):
                raise RemoteError(f"Imagine action server {name} is not available (waited {timeout_s:g} s)")

    # ----- goals -----------------------------------------------------------------------------------
    def _send(self, server: int, goal: Imagine.Goal) -> _Call:
        """Send a goal when the server has a free slot; the call finishes with its result."""
        call = _Call(f"{self.names[server]}'s goal response")
        slot = self._slots[server]
        if not slot.acquire(timeout=self.goal_timeout_s):
            raise RemoteError(f"{self.names[server]}: no free goal slot within {self.goal_timeout_s:g} s")
        self.goals_sent[server] += 1

        def finish(value=None, error=None):
            slot.release()
            call.finish(value, error)

        def on_result(future):
            try:
                finish(future.result().result)
            except Exception as exc:  # noqa: BLE001 - reported to the waiting thread
                finish(error=f"result failed: {exc}")

        def on_goal(future):
            try:
                handle = future.result()
            except Exception as exc:  # noqa: BLE001
                finish(error=f"goal failed: {exc}")
                return
            if not handle.accepted:
                finish(error="goal rejected")
                return
            call.waiting_for = f"{self.names[server]}'s result of accepted goal {bytes(handle.goal_id.uuid).hex()}"
            handle.get_result_async().add_done_callback(on_result)

        self.clients[server].send_goal_async(goal).add_done_callback(on_goal)
        return call

    def _run_goals(self, requests: list[tuple[int, Imagine.Goal]]) -> list:
        """Send all goals (bounded in flight per server), retrying "busy" answers; results in order."""
        results = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(self.busy_retries + 1):
            calls = [(i, self._send(*requests[i])) for i in pending]
            _wait([c for _, c in calls], self.goal_timeout_s, "Imagine")
            pending = []
            for i, call in calls:
                server = requests[i][0]
                if call.error is not None:
                    raise RemoteError(f"Imagine server {self.names[server]}: {call.error}")
                if not call.value.success and "busy" in call.value.message and attempt < self.busy_retries:
                    pending.append(i)
                elif not call.value.success:
                    raise RemoteError(f"Imagine server {self.names[server]}: {call.value.message}")
                else:
                    results[i] = call.value
            if not pending:
                return results
            time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # ----- RolloutBackend --------------------------------------------------------------------------
    def open(self, starts, num_rollouts, seeds):
        groups = []
        for start, seed in zip(starts, seeds, strict=True):
            server = self._next_server
            self._next_server = (self._next_server + 1) % len(self.clients)
            state = start_state(start)
            session = _Session(f"trainer-{uuid.uuid4().hex}", server, start, int(seed))
            groups.append(RolloutGroup(start.instruction, start_frames(start, num_rollouts),
                                       [np.repeat(state[None], num_rollouts, 0)], handle=session))
        return groups

    def _goal(self, group: RolloutGroup, chunks: np.ndarray) -> Imagine.Goal:
        session: _Session = group.handle
        chunks = np.asarray(chunks, np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != group.num_rollouts:
            raise ValueError(f"chunks must be ({group.num_rollouts}, horizon, 7), got {chunks.shape}")
        goal = Imagine.Goal()
        goal.instruction = group.instruction
        goal.chunks = [array_to_chunk(c, "ee_delta_7d", self.control_period_s, instruction=group.instruction)
                       for c in chunks]
        goal.num_rollouts, goal.chunks_per_rollout = group.num_rollouts, 1
        goal.session_id = session.session_id
        goal.num_steps = self.num_steps
        if not session.opened:
            start = session.start
            goal.context_frames = [numpy_to_image(np.ascontiguousarray(f), "rgb8") for f in start.context_frames]
            goal.start_ee_pose = [float(v) for v in start.ee_pose]
            goal.start_gripper = float(start.gripper)
            goal.seed = session.seed
        return goal

    def step(self, groups, chunks):
        requests = [(g.handle.server, self._goal(g, c)) for g, c in zip(groups, chunks, strict=True)]
        results = self._run_goals(requests)
        for group, result in zip(groups, results):
            g = group.num_rollouts
            if result.num_rollouts != g or result.chunks_per_rollout != 1 or result.state_dim != POLICY_STATE_DIM:
                raise RemoteError(f"Imagine result layout {result.num_rollouts} rollouts x {result.chunks_per_rollout} "
                                  f"chunks, state_dim {result.state_dim}; expected {g} x 1, {POLICY_STATE_DIM}")
            frames_per_chunk = int(result.frames_per_chunk)
            if len(result.frames) != g * frames_per_chunk or frames_per_chunk < 1:
                raise RemoteError(f"Imagine result has {len(result.frames)} frames for {g} rollouts x "
                                  f"{frames_per_chunk} frames")
            frames = np.stack([to_rgb8(image) for image in result.frames])
            clip = frames.reshape(g, frames_per_chunk, *frames.shape[1:])
            states = np.asarray(result.states, np.float32).reshape(g, POLICY_STATE_DIM)
            group.handle.opened = True
            group.record(clip, states)

    def close(self, groups):
        """Close the groups' sessions on their servers (best effort: an error is logged, not raised)."""
        requests = []
        for group in groups:
            session = group.handle
            if isinstance(session, _Session) and session.opened:
                requests.append((session.server, Imagine.Goal(session_id=session.session_id, num_rollouts=0)))
                session.opened = False
        if not requests:
            return
        try:
            calls = [self._send(*r) for r in requests]
            _wait(calls, min(self.goal_timeout_s, 30.0), "Imagine session close")
            failed = [c.error or c.value.message for c in calls if c.error is not None or not c.value.success]
            if failed:
                self.node.get_logger().warning(f"closing imagination sessions: {failed[:3]}")
        except RemoteError as exc:
            self.node.get_logger().warning(f"closing imagination sessions: {exc}")


class ScoreRolloutClient:
    """RolloutScorer over a ScoreRollout service (the judge node)."""

    def __init__(self, node, service_name: str, *, timeout_s: float = 300.0, max_in_flight: int = 8):
        self.node = node
        self.service_name = service_name
        self.timeout_s = float(timeout_s)
        self.client = node.create_client(ScoreRollout, service_name, callback_group=ReentrantCallbackGroup())
        self._slots = threading.BoundedSemaphore(max(1, int(max_in_flight)))
        self.requests_sent = 0

    def wait_for_service(self, timeout_s: float) -> None:
        if not self.client.wait_for_service(timeout_sec=timeout_s):
            raise RemoteError(f"ScoreRollout service {self.service_name} is not available (waited {timeout_s:g} s)")

    def _call(self, clip: np.ndarray, instruction: str) -> _Call:
        call = _Call(f"{self.service_name}'s response")
        if not self._slots.acquire(timeout=self.timeout_s):
            raise RemoteError(f"{self.service_name}: no free request slot within {self.timeout_s:g} s")
        request = ScoreRollout.Request(instruction=instruction,
                                       frames=[numpy_to_image(np.ascontiguousarray(f), "rgb8") for f in clip])
        self.requests_sent += 1

        def done(future):
            self._slots.release()
            try:
                call.finish(future.result())
            except Exception as exc:  # noqa: BLE001
                call.finish(error=str(exc))

        self.client.call_async(request).add_done_callback(done)
        return call

    def score(self, clips, instructions, states):
        calls = [self._call(clip, instruction) for clip, instruction in zip(clips, instructions, strict=True)]
        _wait(calls, self.timeout_s, f"ScoreRollout {self.service_name}")
        probs, decisions = [], []
        for call in calls:
            if call.error is not None:
                raise RemoteError(f"ScoreRollout {self.service_name}: {call.error}")
            response = call.value
            if response.message and not np.isfinite(response.success_probability):
                raise RemoteError(f"ScoreRollout {self.service_name}: {response.message}")
            probs.append(response.success_probability)
            decisions.append(response.success)
        return np.asarray(probs, np.float32), np.asarray(decisions, bool)
