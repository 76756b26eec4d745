from collections import namedtuple

import numpy as np
import pytest

from prophrl_robot.teleop import EpisodeCommand, KeyboardTeleop, SpaceMouseMapping, SpaceMouseTeleop, TeleopScales

State = namedtuple("State", "t x y z roll pitch yaw buttons")


def test_keyboard_keys_map_to_base_frame_steps():
    teleop = KeyboardTeleop(TeleopScales(translation_step_m=0.02, rotation_step_rad=0.1))
    np.testing.assert_allclose(teleop.on_key("w"), [0.02, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(teleop.on_key("d"), [0, -0.02, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(teleop.on_key("F"), [0, 0, -0.02, 0, 0, 0, 0])
    np.testing.assert_allclose(teleop.on_key("j"), [0, 0, 0, 0, 0, 0.1, 0])
    closed = teleop.on_key(" ")
    assert closed[6] == 1.0 and not closed[:6].any()
    assert teleop.on_key("w")[6] == 1.0, "gripper state persists across motion keys"
    assert teleop.on_key(" ")[6] == 0.0
    assert teleop.on_key("z") is None
    assert teleop.on_key("n") is EpisodeCommand.START
    assert teleop.on_key("y") is EpisodeCommand.SUCCESS
    assert teleop.on_key("x") is EpisodeCommand.FAILURE
    assert teleop.on_key("\x03") is EpisodeCommand.QUIT


def test_spacemouse_axes_deadzone_and_buttons():
    teleop = SpaceMouseTeleop(TeleopScales(0.01, 0.05), SpaceMouseMapping(deadzone=0.1))
    step, commands = teleop.on_state(State(0, x=0.5, y=1.0, z=-0.05, roll=0, pitch=0, yaw=-1.0, buttons=[0, 0]))
    # device forward (y) -> base +x; device right (x) -> base -y; z inside the deadzone -> 0
    np.testing.assert_allclose(step, [0.01, -0.005, 0.0, 0, 0, -0.05, 0.0], atol=1e-7)
    assert commands == []
    step, commands = teleop.on_state(State(0, 0, 0, 0, 0, 0, 0, buttons=[1, 1]))
    assert step[6] == 1.0 and commands == [EpisodeCommand.SUCCESS]
    step, commands = teleop.on_state(State(0, 0, 0, 0, 0, 0, 0, buttons=[1, 1]))
    assert step[6] == 1.0 and commands == [], "a held button acts once"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e9])
def test_spacemouse_garbage_never_exceeds_one_step(bad):
    teleop = SpaceMouseTeleop(TeleopScales(0.01, 0.05))
    step, _ = teleop.on_state(State(0, bad, bad, bad, bad, bad, bad, buttons=[]))
    assert np.all(np.isfinite(step))
    assert np.all(np.abs(step[:3]) <= 0.01) and np.all(np.abs(step[3:6]) <= 0.05)
