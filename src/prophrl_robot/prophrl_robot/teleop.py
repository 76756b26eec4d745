"""Teleoperation devices -> end-effector delta steps (ee_delta_7d). Pure Python, no ROS.

Each device turns operator input into one 7-D step [dx dy dz droll dpitch dyaw gripper] in the
robot base frame (x forward, y left, z up), metres / radians per control step, gripper 0 open ..
1 closed, plus episode commands (start / success / failure / quit).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class EpisodeCommand(enum.Enum):
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    QUIT = "quit"


@dataclasses.dataclass(frozen=True)
class TeleopScales:
    translation_step_m: float = 0.01
    rotation_step_rad: float = 0.05


# key -> (axis index in the 6-D motion, sign)
KEY_MOTIONS = {
    "w": (0, +1), "s": (0, -1),   # forward / back
    "a": (1, +1), "d": (1, -1),   # left / right
    "r": (2, +1), "f": (2, -1),   # up / down
    "u": (3, +1), "o": (3, -1),   # roll
    "i": (4, +1), "k": (4, -1),   # pitch
    "j": (5, +1), "l": (5, -1),   # yaw
}
KEY_COMMANDS = {"n": EpisodeCommand.START, "y": EpisodeCommand.SUCCESS, "x": EpisodeCommand.FAILURE,
                "\x1b": EpisodeCommand.QUIT, "\x03": EpisodeCommand.QUIT}
GRIPPER_TOGGLE_KEY = " "

KEYBOARD_HELP = """\
keyboard teleop (base frame, one step per key press; hold a key to repeat):
  w/s forward/back   a/d left/right   r/f up/down
  u/o roll           i/k pitch        j/l yaw
  space  toggle gripper
  n start episode    y success        x failure      Esc/Ctrl-C quit"""


class KeyboardTeleop:
    """Terminal keys -> steps. A terminal gives key presses (auto-repeated), never releases,
    so each press is one step; without presses no step is sent and the executor holds."""

    def __init__(self, scales: TeleopScales = TeleopScales()):
        self.scales = scales
        self.gripper = 0.0

    def on_key(self, key: str) -> np.ndarray | EpisodeCommand | None:
        """A step to execute, an episode command, or None for an unbound key."""
        if key in KEY_COMMANDS:
            return KEY_COMMANDS[key]
        if key == GRIPPER_TOGGLE_KEY:
            self.gripper = 1.0 - self.gripper
            return self._step(np.zeros(6))
        if key.lower() in KEY_MOTIONS:
            axis, sign = KEY_MOTIONS[key.lower()]
            motion = np.zeros(6)
            motion[axis] = sign
            return self._step(motion)
        return None

    def _step(self, unit_motion: np.ndarray) -> np.ndarray:
        step = np.empty(7, dtype=np.float32)
        step[:3] = unit_motion[:3] * self.scales.translation_step_m
        step[3:6] = unit_motion[3:] * self.scales.rotation_step_rad
        step[6] = self.gripper
        return step


@dataclasses.dataclass(frozen=True)
class SpaceMouseMapping:
    """pyspacemouse axes (x right, y forward, z up; roll about y, pitch about x, yaw about z,
    each in [-1, 1]) -> base-frame motion. Flip a sign here if your device or mounting differs."""

    deadzone: float = 0.1
    translation_signs: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation_signs: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gripper_button: int = 0
    success_button: int = 1


class SpaceMouseTeleop:
    """A 3Dconnexion SpaceMouse read with pyspacemouse (`open()`, `read()` -> state with
    t, x, y, z, roll, pitch, yaw, buttons). Deflection scales the step: full deflection is
    one full translation/rotation step per control period."""

    def __init__(self, scales: TeleopScales = TeleopScales(), mapping: SpaceMouseMapping = SpaceMouseMapping()):
        self.scales = scales
        self.mapping = mapping
        self.gripper = 0.0
        self._buttons_before: tuple[int, ...] = ()

    @staticmethod
    def open_device():
        try:
            import pyspacemouse
        except ImportError as exc:
            raise RuntimeError("SpaceMouse teleop needs pyspacemouse: pip install pyspacemouse "
                               "(and the hidapi system library)") from exc
        if not pyspacemouse.open():
            raise RuntimeError("no SpaceMouse found (check the USB connection and hidraw permissions)")
        return pyspacemouse

    def on_state(self, state) -> tuple[np.ndarray, list[EpisodeCommand]]:
        """One step from a pyspacemouse state, and episode commands from newly pressed buttons."""
        m = self.mapping
        device = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        device = np.where(np.isfinite(device), np.clip(device, -1.0, 1.0), 0.0)
        device[np.abs(device) < m.deadzone] = 0.0
        # device x right, y forward -> base x forward, y left; roll is about the device's forward axis
        motion = np.array([device[1], -device[0], device[2], device[3], -device[4], device[5]])
        motion[:3] *= np.asarray(m.translation_signs)
        motion[3:] *= np.asarray(m.rotation_signs)

        buttons = tuple(int(b) for b in getattr(state, "buttons", ()))
        pressed = [i for i, b in enumerate(buttons) if b and (i >= len(self._buttons_before) or not self._buttons_before[i])]
        self._buttons_before = buttons
        commands = []
        if m.gripper_button in pressed:
            self.gripper = 1.0 - self.gripper
        if m.success_button in pressed:
            commands.append(EpisodeCommand.SUCCESS)

        step = np.empty(7, dtype=np.float32)
        step[:3] = motion[:3] * self.scales.translation_step_m
        step[3:6] = motion[3:] * self.scales.rotation_step_rad
        step[6] = self.gripper
        return step, commands
