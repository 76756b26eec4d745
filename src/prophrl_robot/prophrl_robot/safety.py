"""Safety filter for action-chunk execution: pure Python + numpy, no ROS.

Every command the executor sends to an arm passes through :class:`SafetyFilter`. Its guarantee,
fuzzed in ``test/test_safety.py``: whatever the input (NaN, inf, 1e308, -0.0, wrong shapes,
huge jumps, a non-finite current state), a step is either a *hold* or a finite command inside
every limit of the robot config:

* end-effector deltas (``ee_delta_7d``: dpos, drot as a rotation vector, gripper; prophrl_common.chunks):
  ``|d_xyz| <= max_ee_translation_per_step_m``, ``|drot| <= max_ee_rotation_per_step_rad``,
  ``0 <= gripper <= 1``, and on every axis the target ``current + d`` stays inside the
  workspace box (or, when ``current`` is already outside on that axis, moves toward the box
  and never past it);
* joint position targets: inside ``[lower, upper]`` and within
  ``min(max_joint_step_rad, velocity_limit * dt)`` of the reference position (a reference
  outside the limits by more than one step cannot satisfy both, so it is a hold);
* a latched e-stop turns every output into a hold until :meth:`SafetyFilter.reset`.

Velocities for twist interfaces come from :meth:`SafetyFilter.twist_from_delta`, which divides by
``max(dt, control_period_s)``: steps are never executed faster than the robot's control period,
so a chunk claiming a tiny period cannot turn a small delta into a large velocity.

:class:`Watchdog` is the pure timing logic (time is always passed in).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import numpy as np

from prophrl_common.chunks import ARM_ACTION_DIM

# Every reason a step can be modified or held; each has a counter.
REASONS = (
    "nonfinite",            # NaN/inf in the action -> hold
    "wrong_dim",            # action of the wrong shape/size -> hold
    "no_state",             # current state unknown, non-finite or of the wrong size -> hold
    "estop",                # e-stop engaged -> hold
    "clamped_translation",  # |d_xyz| clamped
    "clamped_rotation",     # |drot| (the rotation angle) clamped
    "clamped_gripper",      # gripper clamped into [0, 1]
    "workspace",            # translation clamped to keep the target in the workspace box
    "joint_limit",          # joint target clamped into [lower, upper]
    "joint_rate",           # joint step clamped to the per-step rate limit
    "state_out_of_limits",  # reference joint position too far outside the limits -> hold
)


@dataclasses.dataclass(frozen=True)
class SafetyResult:
    """One filtered step: ``command`` (float64 array) or ``None`` for a hold, and why."""

    command: np.ndarray | None
    reasons: tuple[str, ...] = ()

    @property
    def hold(self) -> bool:
        return self.command is None

    @property
    def modified(self) -> bool:
        return bool(self.reasons)


def _as_vector(values: Any) -> np.ndarray | None:
    """A 1-D float64 copy of ``values`` or None when it cannot be one (ragged, strings, ...)."""
    if values is None:
        return None
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.ndim != 1:
        return None
    return arr


def _positive_finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _norm(vec: np.ndarray) -> float:
    """Euclidean norm that does not overflow for huge finite components."""
    scale = float(np.max(np.abs(vec))) if vec.size else 0.0
    if scale == 0.0:
        return 0.0
    return scale * float(np.sqrt(np.sum((vec / scale) ** 2)))


def clamp_norm(vec: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    """Scale ``vec`` so that its norm is <= ``max_norm`` (exactly, after rounding)."""
    n = _norm(vec)
    if n <= max_norm:
        return vec, False
    out = vec * (max_norm / n)
    # Rounding can leave the norm a few ulps above the limit: shrink until it is not.
    while _norm(out) > max_norm:
        out = out * (1.0 - 1e-12)
    return out, True


def _shrink_until_ok(cur: float, out: float, lo: float, hi: float, toward_only: bool) -> float:
    """Reduce ``|out|`` by ulps of ``cur`` until ``cur + out`` is acceptable; 0 is always safe."""
    def ok(v: float) -> bool:
        target = cur + v
        if toward_only:  # started outside: must not overshoot the far side of the box
            return lo <= target if cur > hi else target <= hi
        return lo <= target <= hi
    ulp = math.ulp(max(abs(cur), abs(out)))
    for _ in range(64):
        if ok(out):
            return out
        if abs(out) <= ulp:
            return 0.0
        out -= math.copysign(ulp, out)
    return 0.0


def _axis_delta(cur: float, d: float, lo: float, hi: float) -> float:
    """Clamp one axis of a translation so that ``cur + d`` stays in ``[lo, hi]``.

    Outside the box, only motion toward it is allowed, and never past the far bound.
    The result has the sign of ``d`` (or is 0) and ``|result| <= |d|``.
    """
    if cur > hi:  # outside, above: only move down, no further than lo
        if d >= 0.0:
            return 0.0
        return _shrink_until_ok(cur, max(d, lo - cur), lo, hi, True)
    if cur < lo:  # outside, below: only move up, no further than hi
        if d <= 0.0:
            return 0.0
        return _shrink_until_ok(cur, min(d, hi - cur), lo, hi, True)
    target = cur + d
    if lo <= target <= hi:
        return d
    out = (hi - cur) if target > hi else (lo - cur)
    out = min(out, d) if d > 0 else max(out, d)
    return _shrink_until_ok(cur, out, lo, hi, False)


class SafetyFilter:
    """Limits from a :class:`prophrl_common.robots.RobotConfig`; counters per reason.

    Not thread-safe: call from one thread (the executor's callbacks are serialized).
    """

    def __init__(self, robot: Any):
        self.robot = robot
        self.num_joints = len(robot.joint_names)
        self.lower = np.asarray(robot.joint_position_lower, dtype=np.float64)
        self.upper = np.asarray(robot.joint_position_upper, dtype=np.float64)
        self.velocity_limits = np.asarray(robot.joint_velocity_limits, dtype=np.float64)
        self.workspace_min = np.asarray(robot.workspace_min, dtype=np.float64)
        self.workspace_max = np.asarray(robot.workspace_max, dtype=np.float64)
        self.max_translation = float(robot.max_ee_translation_per_step_m)
        self.max_rotation = float(robot.max_ee_rotation_per_step_rad)
        self.max_joint_step = float(robot.max_joint_step_rad)
        self.control_period_s = float(robot.control_period_s)
        for name, value in (("max_ee_translation_per_step_m", self.max_translation),
                            ("max_ee_rotation_per_step_rad", self.max_rotation),
                            ("max_joint_step_rad", self.max_joint_step),
                            ("control_period_s", self.control_period_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (self.lower.shape == self.upper.shape == self.velocity_limits.shape == (self.num_joints,)):
            raise ValueError("joint limits must have one value per joint")
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))
                and np.all(self.lower < self.upper)):
            raise ValueError("joint limits must be finite with lower < upper")
        if not (np.all(np.isfinite(self.velocity_limits)) and np.all(self.velocity_limits > 0)):
            raise ValueError("joint_velocity_limits must be positive numbers")
        if not (self.workspace_min.shape == self.workspace_max.shape == (3,)
                and np.all(np.isfinite(self.workspace_min)) and np.all(np.isfinite(self.workspace_max))
                and np.all(self.workspace_min < self.workspace_max)):
            raise ValueError("workspace_min/max must be 3 finite values with min < max")
        self._estop = False
        self._counters: dict[str, int] = {"steps": 0, "holds": 0, **{r: 0 for r in REASONS}}

    # ---------------------------------------------------------------- e-stop / counters
    @property
    def estopped(self) -> bool:
        return self._estop

    def engage_estop(self) -> None:
        """Latch the e-stop: every output is a hold until :meth:`reset`."""
        self._estop = True

    def reset(self) -> None:
        """Release the e-stop (the only way to). Counters are kept."""
        self._estop = False

    reset_estop = reset

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters: ``steps``, ``holds`` and one per reason in :data:`REASONS`."""
        return dict(self._counters)

    def count(self, reason: str, n: int = 1) -> None:
        """Count an event by reason (the executor uses it for e-stop-dropped steps)."""
        self._counters[reason] = self._counters.get(reason, 0) + n

    def _finish(self, command: np.ndarray | None, reasons: Iterable[str]) -> SafetyResult:
        reasons = tuple(reasons)
        self._counters["steps"] += 1
        if command is None:
            self._counters["holds"] += 1
        for r in reasons:
            self._counters[r] = self._counters.get(r, 0) + 1
        return SafetyResult(command, reasons)

    def _hold(self, reason: str) -> SafetyResult:
        return self._finish(None, (reason,))

    def effective_dt(self, dt: Any = None) -> float:
        """The time one step lasts: the chunk's period, never shorter than the control period."""
        value = _positive_finite(dt)
        return self.control_period_s if value is None else max(value, self.control_period_s)

    # ---------------------------------------------------------------- end-effector deltas
    def filter_ee_delta(self, action: Any, current_position: Any) -> SafetyResult:
        """Filter one ``ee_delta_7d`` step given the current end-effector position (x, y, z).

        Returns a step of the same layout (dpos, drot, gripper) or a hold.
        """
        if self._estop:
            return self._hold("estop")
        a = _as_vector(action)
        if a is None or a.shape != (ARM_ACTION_DIM,):
            return self._hold("wrong_dim")
        if not np.all(np.isfinite(a)):
            return self._hold("nonfinite")
        cur = _as_vector(current_position)
        if cur is None or cur.shape != (3,) or not np.all(np.isfinite(cur)):
            return self._hold("no_state")
        reasons: list[str] = []
        trans, clamped = clamp_norm(a[:3], self.max_translation)
        if clamped:
            reasons.append("clamped_translation")
        rot, clamped = clamp_norm(a[3:6], self.max_rotation)
        if clamped:
            reasons.append("clamped_rotation")
        boxed = np.array([_axis_delta(float(cur[i]), float(trans[i]),
                                      float(self.workspace_min[i]), float(self.workspace_max[i]))
                          for i in range(3)])
        if np.any(boxed != trans):
            reasons.append("workspace")
        gripper = float(a[6])
        clipped = min(max(gripper, 0.0), 1.0)
        if clipped != gripper:
            reasons.append("clamped_gripper")
        command = np.concatenate([boxed, rot, [clipped]]) + 0.0  # + 0.0 turns -0.0 into 0.0
        return self._finish(command, reasons)

    def twist_from_delta(self, command: np.ndarray, dt: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(linear, angular) velocity executing a filtered delta over one step.

        Divides by :meth:`effective_dt`, so ``|linear| <= max_translation / control_period_s``
        and ``|angular| <= max_rotation / control_period_s``.
        """
        step = self.effective_dt(dt)
        command = np.asarray(command, dtype=np.float64)
        linear, _ = clamp_norm(command[:3] / step, self.max_translation / self.control_period_s)
        angular, _ = clamp_norm(command[3:6] / step, self.max_rotation / self.control_period_s)
        return linear + 0.0, angular + 0.0

    # ---------------------------------------------------------------- joint positions
    def joint_step_limits(self, dt: Any = None) -> np.ndarray:
        """Per-joint max change per step: ``min(max_joint_step_rad, velocity_limit * dt)``."""
        # Beyond max_joint_step / v_min the velocity term never binds; capping dt avoids overflow.
        dt = min(self.effective_dt(dt), self.max_joint_step / float(np.min(self.velocity_limits)))
        return np.minimum(self.max_joint_step, self.velocity_limits * dt)

    def filter_joint_position(self, target: Any, current: Any, dt: Any = None,
                              reference: Any = None) -> SafetyResult:
        """Filter one joint position target.

        ``current`` is the measured joint position (required, finite). The rate limit is taken
        relative to ``reference`` (e.g. the last commanded target while streaming) when given,
        else relative to ``current``.
        """
        if self._estop:
            return self._hold("estop")
        t = _as_vector(target)
        if t is None or t.shape != (self.num_joints,):
            return self._hold("wrong_dim")
        if not np.all(np.isfinite(t)):
            return self._hold("nonfinite")
        cur = _as_vector(current)
        if cur is None or cur.shape != (self.num_joints,) or not np.all(np.isfinite(cur)):
            return self._hold("no_state")
        ref = cur
        if reference is not None:
            ref = _as_vector(reference)
            if ref is None or ref.shape != (self.num_joints,) or not np.all(np.isfinite(ref)):
                return self._hold("no_state")
        step = self.joint_step_limits(dt)
        lo = np.maximum(self.lower, ref - step)
        hi = np.minimum(self.upper, ref + step)
        if np.any(lo > hi):  # the reference is more than one step outside the limits
            return self._hold("state_out_of_limits")
        reasons = []
        if np.any((t < self.lower) | (t > self.upper)):
            reasons.append("joint_limit")
        within_limits = np.clip(t, self.lower, self.upper)
        if np.any((within_limits < lo) | (within_limits > hi)):
            reasons.append("joint_rate")
        command = np.clip(t, lo, hi) + 0.0
        return self._finish(command, reasons)


class Watchdog:
    """Pure watchdog logic: no clock reads, ``now`` (seconds, monotonic) is always passed in.

    ``step_executed(now)`` records a step; ``should_hold(now)`` is true when the last step is
    older than ``timeout_s``; ``hold_due(now)`` is true exactly once per such stop.
    """

    def __init__(self, timeout_s: float):
        value = _positive_finite(timeout_s)
        if value is None:
            raise ValueError(f"watchdog timeout must be a positive number, got {timeout_s}")
        self.timeout_s = value
        self.last_step: float | None = None
        self._fired = False

    def step_executed(self, now: float) -> None:
        self.last_step = float(now)
        self._fired = False

    def should_hold(self, now: float) -> bool:
        return self.last_step is not None and (float(now) - self.last_step) > self.timeout_s

    def hold_due(self, now: float) -> bool:
        """True once per stop: the first call after the timeout with no step since."""
        if self._fired or not self.should_hold(now):
            return False
        self._fired = True
        return True

    @property
    def holding(self) -> bool:
        return self._fired

    def reset(self) -> None:
        self.last_step = None
        self._fired = False
