"""SafetyFilter / Watchdog: hand-checked cases and a hypothesis fuzz of the no-violation guarantee."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prophrl_common.robots import available_robots, load_robot_config
from prophrl_robot.safety import REASONS, SafetyFilter, Watchdog

# panda_sim's step limits (0.03 m / 0.15 rad per step) with a fixed box the hand-checked values use:
# x, y in +-0.45, z in [0.8, 1.4] (independent of the sim's calibrated workspace).
ROBOT = dataclasses.replace(load_robot_config("panda_sim"), workspace_min=(-0.45, -0.45, 0.8),
                            workspace_max=(0.45, 0.45, 1.4))
INSIDE = [0.0, 0.0, 1.0]
REL = 1e-9  # norms computed two ways may differ by an ulp


def ee(dx=0.0, dy=0.0, dz=0.0, rx=0.0, ry=0.0, rz=0.0, g=0.0):
    return [dx, dy, dz, rx, ry, rz, g]


@pytest.fixture
def sf():
    return SafetyFilter(ROBOT)


# ------------------------------------------------------------------ end-effector deltas
def test_small_delta_passes_unchanged(sf):
    r = sf.filter_ee_delta(ee(0.01, -0.005, 0.002, 0.01, 0.0, -0.02, 0.3), INSIDE)
    assert not r.hold and r.reasons == ()
    np.testing.assert_allclose(r.command, [0.01, -0.005, 0.002, 0.01, 0.0, -0.02, 0.3])


def test_translation_norm_is_clamped_keeping_direction(sf):
    r = sf.filter_ee_delta(ee(0.3, 0.4, 0.0), INSIDE)  # |d| = 0.5 -> 0.03
    assert r.reasons == ("clamped_translation",)
    np.testing.assert_allclose(r.command[:3], [0.018, 0.024, 0.0], rtol=1e-9)
    assert np.linalg.norm(r.command[:3]) <= 0.03
    assert sf.counters["clamped_translation"] == 1


def test_rotation_norm_is_clamped(sf):
    r = sf.filter_ee_delta(ee(rx=0.0, ry=-3.0, rz=4.0), INSIDE)  # |r| = 5 -> 0.15
    assert r.reasons == ("clamped_rotation",)
    np.testing.assert_allclose(r.command[3:6], [0.0, -0.09, 0.12], rtol=1e-9)
    assert sf.counters["clamped_rotation"] == 1


def test_gripper_is_clamped_to_unit_interval(sf):
    assert sf.filter_ee_delta(ee(g=2.5), INSIDE).command[6] == 1.0
    r = sf.filter_ee_delta(ee(g=-0.7), INSIDE)
    assert r.command[6] == 0.0 and "clamped_gripper" in r.reasons
    assert math.copysign(1.0, sf.filter_ee_delta(ee(g=-0.0), INSIDE).command[6]) == 1.0  # no -0.0 out


def test_workspace_clamps_at_the_boundary(sf):
    r = sf.filter_ee_delta(ee(dx=0.02, dz=-0.02), [0.44, 0.0, 0.81])
    assert r.reasons == ("workspace",)
    np.testing.assert_allclose(r.command[:3], [0.01, 0.0, -0.01], atol=1e-12)
    target = np.array([0.44, 0.0, 0.81]) + r.command[:3]
    assert np.all(target <= ROBOT.workspace_max) and np.all(target >= ROBOT.workspace_min)
    assert sf.counters["workspace"] == 1


def test_outside_the_box_only_motion_toward_it(sf):
    cur = [0.60, -0.60, 1.0]  # beyond x max and y min
    away = sf.filter_ee_delta(ee(dx=0.02, dy=-0.02, dz=0.01), cur)
    np.testing.assert_allclose(away.command[:3], [0.0, 0.0, 0.01])
    assert "workspace" in away.reasons
    toward = sf.filter_ee_delta(ee(dx=-0.02, dy=0.02), cur)
    np.testing.assert_allclose(toward.command[:3], [-0.02, 0.02, 0.0])
    assert toward.reasons == ()


def test_nonfinite_action_is_a_counted_hold(sf):
    for bad in (float("nan"), float("inf"), -float("inf")):
        r = sf.filter_ee_delta(ee(dx=bad), INSIDE)
        assert r.hold and r.reasons == ("nonfinite",)
    assert sf.counters["nonfinite"] == 3 and sf.counters["holds"] == 3


def test_wrong_dim_and_unknown_state_hold(sf):
    assert sf.filter_ee_delta([0.0] * 6, INSIDE).reasons == ("wrong_dim",)
    assert sf.filter_ee_delta([[0.0] * 7], INSIDE).reasons == ("wrong_dim",)
    assert sf.filter_ee_delta(ee(), None).reasons == ("no_state",)
    assert sf.filter_ee_delta(ee(), [0.0, float("nan"), 1.0]).reasons == ("no_state",)
    assert sf.counters["wrong_dim"] == 2 and sf.counters["no_state"] == 2


def test_twist_divides_by_step_duration_never_below_control_period(sf):
    cmd = sf.filter_ee_delta(ee(dx=0.02, rz=0.1), INSIDE).command
    lin, ang = sf.twist_from_delta(cmd, 0.05)
    np.testing.assert_allclose(lin, [0.4, 0.0, 0.0]) and np.testing.assert_allclose(ang, [0, 0, 2.0])
    lin, _ = sf.twist_from_delta(cmd, 0.1)
    np.testing.assert_allclose(lin, [0.2, 0.0, 0.0])
    lin, _ = sf.twist_from_delta(cmd, 1e-6)  # a chunk claiming a tiny period cannot speed up the arm
    np.testing.assert_allclose(lin, [0.4, 0.0, 0.0])


# ------------------------------------------------------------------ joint positions
HOME = np.array(ROBOT.home_position)


def test_joint_target_within_step_passes(sf):
    target = HOME + 0.01
    r = sf.filter_joint_position(target, HOME)
    assert r.reasons == () and np.allclose(r.command, target)


def test_joint_rate_limit(sf):
    r = sf.filter_joint_position(HOME + np.array([1.0, -1.0, 0, 0, 0, 0, 0.02]), HOME)
    assert r.reasons == ("joint_rate",)
    np.testing.assert_allclose(r.command - HOME, [0.05, -0.05, 0, 0, 0, 0, 0.02], atol=1e-12)


def test_joint_rate_uses_velocity_limit_times_dt():
    slow = SafetyFilter(dataclasses.replace(ROBOT, joint_velocity_limits=(0.2,) * 7))
    r = slow.filter_joint_position(HOME + 1.0, HOME, dt=0.1)  # min(0.05, 0.2 * 0.1) = 0.02
    np.testing.assert_allclose(r.command - HOME, 0.02, atol=1e-12)
    r = slow.filter_joint_position(HOME + 1.0, HOME, dt=1e-4)  # dt below the control period -> 0.05 s
    np.testing.assert_allclose(r.command - HOME, 0.01, atol=1e-12)


def test_joint_limit_clamp(sf):
    cur = np.array(ROBOT.joint_position_upper) - 0.01
    r = sf.filter_joint_position(cur + 0.04, cur)
    assert r.reasons == ("joint_limit",)
    np.testing.assert_allclose(r.command, ROBOT.joint_position_upper)


def test_joint_rate_relative_to_reference(sf):
    ref = HOME + 0.04
    r = sf.filter_joint_position(HOME + 1.0, HOME, reference=ref)
    np.testing.assert_allclose(r.command - ref, 0.05, atol=1e-12)


def test_joint_state_outside_limits(sf):
    slightly = np.array(ROBOT.joint_position_upper) + 0.02  # within one step: move back inside
    r = sf.filter_joint_position(slightly + 1.0, slightly)
    assert not r.hold and np.all(r.command <= ROBOT.joint_position_upper)
    far = np.array(ROBOT.joint_position_upper) + 1.0  # cannot be inside and within one step
    assert sf.filter_joint_position(far, far).reasons == ("state_out_of_limits",)


def test_joint_bad_inputs_hold(sf):
    assert sf.filter_joint_position(HOME[:6], HOME).reasons == ("wrong_dim",)
    assert sf.filter_joint_position(np.r_[HOME[:6], np.nan], HOME).reasons == ("nonfinite",)
    assert sf.filter_joint_position(HOME, np.r_[HOME[:6], np.inf]).reasons == ("no_state",)
    assert sf.filter_joint_position(HOME, None).reasons == ("no_state",)
    assert sf.filter_joint_position(HOME, HOME, reference=[np.nan] * 7).reasons == ("no_state",)


# ------------------------------------------------------------------ e-stop, counters, watchdog
def test_estop_latches_until_reset(sf):
    sf.engage_estop()
    assert sf.estopped
    assert sf.filter_ee_delta(ee(dx=0.01), INSIDE).reasons == ("estop",)
    assert sf.filter_joint_position(HOME, HOME).reasons == ("estop",)
    sf.engage_estop()  # idempotent
    assert sf.filter_ee_delta(ee(), INSIDE).hold
    assert sf.counters["estop"] == 3
    sf.reset()
    assert not sf.estopped and not sf.filter_ee_delta(ee(dx=0.01), INSIDE).hold


def test_counters_cover_every_reason(sf):
    assert set(REASONS) | {"steps", "holds"} == set(sf.counters)
    sf.filter_ee_delta(ee(), INSIDE)
    assert sf.counters["steps"] == 1 and sf.counters["holds"] == 0


def test_watchdog_timing():
    wd = Watchdog(0.2)
    assert not wd.should_hold(1e9) and not wd.hold_due(1e9)  # never stepped: nothing to stop
    wd.step_executed(10.0)
    assert not wd.should_hold(10.19) and not wd.should_hold(10.2)
    assert wd.should_hold(10.2001)
    assert wd.hold_due(10.25) and wd.holding
    assert not wd.hold_due(10.3) and wd.should_hold(10.3)  # once per stop
    wd.step_executed(11.0)
    assert not wd.holding and not wd.hold_due(11.1) and wd.hold_due(11.3)
    wd.reset()
    assert not wd.should_hold(100.0)
    with pytest.raises(ValueError):
        Watchdog(float("nan"))


# ------------------------------------------------------------------ fuzz: no output ever leaves the limits
FINITE_SPECIAL = [0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e30, -1e30, 1.7e308, -1.7e308,
                  0.45, -0.45, 0.8, 1.4, 0.03, -0.03, 1.0]
NONFINITE = [float("nan"), float("inf"), -float("inf")]
finite = st.one_of(st.floats(-0.1, 0.1), st.floats(-2.0, 2.0), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(FINITE_SPECIAL))
anyfloat = st.one_of(st.floats(), st.floats(-2.0, 2.0), st.sampled_from(FINITE_SPECIAL + NONFINITE))
rarely = st.sampled_from([False, False, False, True])


def vectors(n: int, elem=finite):
    """Right size and finite (half the time), right size with anything, or any size (wrong dims)."""
    return st.one_of(st.lists(elem, min_size=n, max_size=n), st.lists(elem, min_size=n, max_size=n),
                     st.lists(st.one_of(elem, anyfloat), min_size=n, max_size=n),
                     st.lists(anyfloat, min_size=0, max_size=n + 3))


ROBOTS = [load_robot_config(name) for name in available_robots()]


def _dist_to_interval(x, lo, hi):
    return max(lo - x, 0.0, x - hi)


@pytest.mark.parametrize("robot", ROBOTS, ids=lambda r: r.name)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=vectors(7), dt=anyfloat, estop=rarely,
       current=st.one_of(st.lists(st.floats(-1.0, 1.6), min_size=3, max_size=3), vectors(3), st.none()))
def test_fuzz_ee_delta_never_leaves_limits(robot, action, current, dt, estop):
    sf = SafetyFilter(robot)
    if estop:
        sf.engage_estop()
    r = sf.filter_ee_delta(action, current)
    a = np.array(action, dtype=np.float64)
    cur = None if current is None else np.array(current, dtype=np.float64)
    must_hold = (estop or a.shape != (7,) or not np.all(np.isfinite(a)) or cur is None or cur.shape != (3,)
                 or not np.all(np.isfinite(cur)))
    assert r.hold == must_hold
    assert sf.counters["steps"] == 1 and sf.counters["holds"] == int(r.hold)
    event("hold" if r.hold else "command")
    if r.hold:
        assert r.reasons and all(sf.counters[x] == 1 for x in r.reasons)
        return
    c = r.command
    assert c.shape == (7,) and np.all(np.isfinite(c))
    assert np.linalg.norm(c[:3]) <= robot.max_ee_translation_per_step_m * (1 + REL)
    assert np.linalg.norm(c[3:6]) <= robot.max_ee_rotation_per_step_rad * (1 + REL)
    assert 0.0 <= c[6] <= 1.0 and math.copysign(1.0, c[6]) == 1.0
    for i in range(3):
        lo, hi = robot.workspace_min[i], robot.workspace_max[i]
        target = cur[i] + c[i]
        assert abs(c[i]) <= abs(a[i]) or "clamped_translation" in r.reasons
        if lo <= cur[i] <= hi:
            assert lo <= target <= hi
        else:  # outside: toward the box, never away, never past its far side
            assert _dist_to_interval(target, lo, hi) <= _dist_to_interval(cur[i], lo, hi)
            assert (target <= hi) if cur[i] < lo else (target >= lo)
    lin, ang = sf.twist_from_delta(c, dt)
    assert np.all(np.isfinite(lin)) and np.all(np.isfinite(ang))
    assert np.linalg.norm(lin) <= robot.max_ee_translation_per_step_m / robot.control_period_s * (1 + REL)
    assert np.linalg.norm(ang) <= robot.max_ee_rotation_per_step_rad / robot.control_period_s * (1 + REL)


def _joint_vectors(robot):
    n = robot.num_joints
    return vectors(n, st.one_of(finite, st.floats(-7.0, 7.0)))


@st.composite
def joint_case(draw, robot):
    n = robot.num_joints
    target = draw(_joint_vectors(robot))
    # Current state: arbitrary, or near/inside the limits so the rate/limit paths are exercised.
    lo, hi = np.array(robot.joint_position_lower), np.array(robot.joint_position_upper)
    inside = st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n).map(
        lambda u: list(lo + np.array(u) * (hi - lo)))
    current = draw(st.one_of(inside, _joint_vectors(robot), st.none()))
    reference = draw(st.one_of(st.none(), inside, _joint_vectors(robot)))
    return target, current, reference


@pytest.mark.parametrize("robot", ROBOTS, ids=lambda r: r.name)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), dt=anyfloat, estop=rarely)
def test_fuzz_joint_position_never_leaves_limits(robot, data, dt, estop):
    target, current, reference = data.draw(joint_case(robot))
    sf = SafetyFilter(robot)
    estop_on = estop
    if estop:
        sf.engage_estop()
    r = sf.filter_joint_position(target, current, dt, reference=reference)
    n = robot.num_joints
    ok_vec = lambda v: v is not None and np.shape(v) == (n,) and np.all(np.isfinite(np.array(v, float)))  # noqa: E731
    if estop_on or not ok_vec(target) or not ok_vec(current) or (reference is not None and not ok_vec(reference)):
        assert r.hold
    assert sf.counters["steps"] == 1
    event("hold" if r.hold else "command")
    if r.hold:
        assert r.reasons
        return
    c = r.command
    ref = np.array(reference if reference is not None else current, dtype=np.float64)
    assert c.shape == (n,) and np.all(np.isfinite(c))
    assert np.all(c >= robot.joint_position_lower) and np.all(c <= robot.joint_position_upper)
    with np.errstate(over="ignore"):
        step = np.minimum(robot.max_joint_step_rad, np.array(robot.joint_velocity_limits) * sf.effective_dt(dt))
    assert np.all(np.abs(c - ref) <= step * (1 + REL) + 1e-12)
    assert np.all(step <= robot.max_joint_step_rad)
