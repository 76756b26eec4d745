"""How the imagination server orders Imagine goals and keeps sessions, without ROS.

GoalQueue: Imagine goals (and model swaps) are served one at a time in arrival order; a goal that would
wait behind more than `max_queued` others is refused at once ("busy"). SessionTable: a session keeps a
group of imagined rollouts between goals (named by session_id); it is closed on request, after `ttl_s`
idle, when the model it ran on is replaced, or when a goal on it fails. ServedModel: the model the server
serves and its generation, swapped atomically. goal_chunks / goal_start: an Imagine goal's chunks and
start, checked (a bad goal is a GoalError with the reason). Also here: where live imagination starts
(load_dataset_start) and how a chunk is fitted to the world model's clip (fit_chunk).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prophrl_common.chunks import ARM_ACTION_DIM, ARM_GRIPPER, EE_ACTION_SPACES, InvalidChunkError, chunk_to_array
from prophrl_common.config_io import ConfigError
from prophrl_common.images import ImageConversionError, to_rgb8
from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts


class GoalError(Exception):
    """A goal that cannot be served as asked: answered with success=false and this message."""


class Canceled(Exception):
    """The goal was canceled (the message says when)."""


class ServedModel:
    """The Prophet model a server serves. `lock` serialises model calls and the swap; `generation` counts swaps
    (a session or a live episode that ran on an older generation is stale)."""

    def __init__(self, model=None, path: str = ""):
        self.lock = threading.Lock()
        self.model, self.path, self.generation = model, path, 0

    def current(self) -> tuple[object, int]:
        with self.lock:
            return self.model, self.generation

    def swap(self, model, path: str) -> None:
        """Serve `model` from now on (the caller holds `lock`)."""
        self.model, self.path = model, path
        self.generation += 1


class GoalQueue:
    """One goal at a time, in arrival order."""

    def __init__(self, max_queued: int = 2):
        self.max_queued = max_queued
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def wait_turn(self, is_canceled: Callable[[], bool] | None = None, on_queued: Callable[[], None] | None = None,
                  limit: bool = True) -> object:
        """Join the queue and wait until first; returns the ticket to `leave` with. Raises GoalError when the
        queue is full (unless not `limit`), Canceled when `is_canceled()` while waiting. `on_queued` is called
        once if the goal has to wait."""
        ticket = object()
        with self._cond:
            if limit and len(self._queue) > self.max_queued:
                raise GoalError(f"busy: {len(self._queue)} goal(s) running or queued (max_queued_goals "
                                f"{self.max_queued}); retry later")
            self._queue.append(ticket)
            announced = False
            try:
                while self._queue[0] is not ticket:
                    if is_canceled is not None and is_canceled():
                        raise Canceled("while queued")
                    if on_queued is not None and not announced:
                        on_queued()
                        announced = True
                    self._cond.wait(timeout=0.1)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
        return ticket

    def leave(self, ticket: object) -> None:
        with self._cond:
            self._queue.remove(ticket)
            self._cond.notify_all()


@dataclasses.dataclass
class Session:
    rollouts: ImaginedRollouts
    instruction: str
    model_generation: int
    last_used: float
    in_use: bool = False


class SessionTable:
    """Open sessions by id (thread-safe)."""

    def __init__(self, max_sessions: int = 16, ttl_s: float = 600.0):
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def expire(self) -> list[str]:
        """Close the sessions idle for longer than ttl_s; returns their ids."""
        now = time.monotonic()
        with self._lock:
            expired = [k for k, s in self._sessions.items() if not s.in_use and now - s.last_used > self.ttl_s]
            for key in expired:
                del self._sessions[key]
        return expired

    def close(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def clear(self) -> int:
        with self._lock:
            closed = len(self._sessions)
            self._sessions.clear()
        return closed

    def check_out(self, session_id: str, num_rollouts: int, model_generation: int, can_open: bool) -> Session | None:
        """The open session `session_id`, marked in use; None when a new one is to be opened (a one-shot goal
        has no session_id). A session of an older model is closed. GoalError when it cannot be opened
        (`can_open`: the goal brings context frames; max_sessions) or does not fit the goal."""
        with self._lock:
            session = self._sessions.get(session_id) if session_id else None
            if session is not None and session.model_generation != model_generation:
                self._sessions.pop(session_id)
                session = None
            if session_id and session is None and not can_open:
                raise GoalError(f"unknown session {session_id!r} (never opened, expired after session_ttl_s "
                                f"{self.ttl_s:g} s idle, or closed by a model swap); send context_frames "
                                "to open it")
            if session_id and session is None and len(self._sessions) >= self.max_sessions:
                raise GoalError(f"{len(self._sessions)} sessions are open (max_sessions {self.max_sessions}): close "
                                "one (a goal naming it with num_rollouts 0) or wait for session_ttl_s")
            if session is not None and session.rollouts.num_rollouts != num_rollouts:
                raise GoalError(f"session {session_id!r} has {session.rollouts.num_rollouts} rollouts, the goal "
                                f"{num_rollouts}")
            if session is not None:
                session.in_use = True
        return session

    def check_in(self, session_id: str, session: Session, keep: bool, opened: bool) -> tuple[int, int]:
        """The goal on `session` is over: a new session is kept (`keep` and `opened`), a failed one closed.
        Returns (sessions opened, sessions closed)."""
        with self._lock:
            session.in_use = False
            session.last_used = time.monotonic()
            if keep and opened:
                self._sessions[session_id] = session
                return 1, 0
            if not keep and not opened and self._sessions.pop(session_id, None) is not None:
                return 0, 1
        return 0, 0


def goal_chunks(goal, config) -> list[np.ndarray]:
    """The (horizon, action_dim) arrays of an Imagine goal's chunks, checked against the model `config`."""
    horizon = config.action_horizon
    arrays, dims = [], set()
    for i, msg in enumerate(goal.chunks):
        try:
            actions = chunk_to_array(msg)
        except InvalidChunkError as exc:
            raise GoalError(f"chunk {i}: {exc}") from None
        if msg.action_space not in EE_ACTION_SPACES:
            raise GoalError(f"chunk {i}: action_space {msg.action_space!r} cannot be imagined; the world model "
                            f"takes end-effector deltas {sorted(EE_ACTION_SPACES)}")
        if actions.shape[0] != horizon:
            raise GoalError(f"chunk {i} has horizon {actions.shape[0]}, but the world model executes exactly "
                            f"{horizon} actions per clip (frames_per_clip {config.frames_per_clip} x "
                            f"actions_per_frame {config.actions_per_frame}): send chunks of {horizon} steps")
        if actions.shape[1] > config.action_dim:
            raise GoalError(f"chunk {i} has {actions.shape[1]} action dims; this world model takes at most "
                            f"{config.action_dim}")
        dims.add(actions.shape[1])
        arrays.append(actions)
    if len(dims) > 1:
        raise GoalError(f"chunks mix action dims {sorted(dims)}")
    return arrays


def goal_start(goal) -> ImaginationStart:
    """Where a one-shot goal or a new session starts: its context frames, start pose and gripper, checked."""
    if not goal.context_frames:
        raise GoalError("a new session or one-shot goal needs context_frames (oldest first; the last one is "
                        "the start frame)")
    first = goal.context_frames[0]
    frames = []
    for i, image in enumerate(goal.context_frames):
        if (image.width, image.height, image.encoding) != (first.width, first.height, first.encoding):
            raise GoalError(f"context frame {i} is {image.width}x{image.height} {image.encoding}, but frame 0 is "
                            f"{first.width}x{first.height} {first.encoding}: all context frames must share "
                            "one size and encoding")
        try:
            frames.append(to_rgb8(image))
        except ImageConversionError as exc:
            raise GoalError(f"context frame {i}: {exc}") from None
    if first.width == 0 or first.height == 0:
        raise GoalError("context frames are empty (0 pixels)")
    pose = None
    if len(goal.start_ee_pose):
        if len(goal.start_ee_pose) != 7:
            raise GoalError(f"start_ee_pose must be empty or 7 values (x y z qx qy qz qw), got "
                            f"{len(goal.start_ee_pose)}")
        pose = np.asarray(goal.start_ee_pose, np.float64)
    try:
        return ImaginationStart(np.stack(frames), goal.instruction, pose, float(goal.start_gripper))
    except ConfigError as exc:
        raise GoalError(str(exc)) from None


def fit_chunk(actions: np.ndarray, horizon: int) -> np.ndarray:
    """A (steps, 7 * arms) chunk as exactly `horizon` steps: truncated, or padded with zero motion and the
    last gripper command of every arm."""
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] % ARM_ACTION_DIM:
        raise ValueError(f"a chunk must be (steps >= 1, 7 per arm), got {actions.shape}")
    if actions.shape[0] >= horizon:
        return actions[:horizon].copy()
    pad = np.zeros((horizon - actions.shape[0], actions.shape[1]), np.float32)
    grippers = np.arange(ARM_GRIPPER, actions.shape[1], ARM_ACTION_DIM)
    pad[:, grippers] = actions[-1, grippers]
    return np.concatenate([actions, pad])


@dataclasses.dataclass(frozen=True)
class DatasetStart:
    """Where live imagination starts: frame 0 of one bags2dataset episode."""

    start: ImaginationStart
    episode: int
    num_episodes: int
    episode_id: str
    task: str


def load_dataset_start(dataset_dir: str | Path, episode: int) -> DatasetStart:
    """Frame 0, ee_pose 0 and the instruction (and camera calibration, when recorded) of one episode of a
    bags2dataset directory; the gripper starts open (0: no command before the first frame)."""
    from prophrl_data.shards import EpisodeDataset

    root = Path(dataset_dir)
    try:
        dataset = EpisodeDataset(root)
    except ConfigError as exc:
        raise ConfigError(f"start_dataset {exc}") from None
    episodes = dataset.entries
    if not episodes:
        raise ConfigError(f"start_dataset {root}: index.json lists no episodes")
    if isinstance(episode, bool) or not isinstance(episode, int) or not 0 <= episode < len(episodes):
        raise ConfigError(f"start_episode {episode!r} is out of range: {root} has {len(episodes)} episode(s), "
                          f"0..{len(episodes) - 1}")
    entry = episodes[episode]
    where = f"{root} episode {episode}"
    try:
        recorded = dataset.episode(episode, ("frames", "ee_pose"))
        frame, ee_pose = recorded.frames[0], recorded.ee_pose[0]
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except IndexError as exc:
        raise ConfigError(f"{where}: cannot read frame 0 / ee_pose 0 of its shard: {type(exc).__name__}: {exc}") \
            from None
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ConfigError(f"{where}: frames must be (N, H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    calibration = recorded.calibration
    try:
        start = ImaginationStart(frame[None], str(entry.get("instruction", "")), ee_pose, 0.0, calibration)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return DatasetStart(start, episode, len(episodes), str(entry.get("episode_id") or f"episode{episode}"),
                        str(entry.get("task") or ""))
