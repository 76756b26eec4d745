"""Scripted expert: ee_delta_7d action chunks that solve the sim tasks from ground-truth poses.

Input per call: the TCP pose, the task's object poses (both in the base frame) and a clock.
Output: an (H, 7) chunk of per-step deltas [dx dy dz droll dpitch dyaw gripper] (metres,
rotation-vector radians about the base axes, gripper 0 open .. 1 closed).

Each task is a sequence of stages (e.g. above the cube -> down -> close -> lift). A stage gives a
target TCP pose and gripper command, and says when it is done. Every call re-reads the real poses
to advance stages, restarts the attempt when a held object was lost, and then rolls the stages
forward over the horizon on a predicted TCP (assumed to follow the deltas exactly), so a chunk is
a coherent plan and still works when only its first steps run before the next chunk replaces it.

Imperfect demonstrations: `noise_std` (metres / radians per step) adds Gaussian noise to every
delta, and with probability 1 - `skill` a grasp attempt contains one deliberate mistake (grasp
point offset, gripper closed too early, or gripper not turned to the object). A failed attempt is
noticed and retried, so imperfect demos show recoveries; with skill 0 every attempt is flawed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_sim.arm_sim import Pose
from prophrl_sim.tasks import StackTask

MISTAKES = ("grasp_offset", "early_close", "skip_orientation")

MAX_STEP_M = 0.015  # 0.3 m/s at 20 Hz
# Final approaches go slower: the arm lags its commands by ~0.1 s and would otherwise overshoot.
FINE_STEP_M = 0.006
MAX_ROTATION_STEP_RAD = 0.08
# Fraction of the remaining error commanded per step. The arm integrates deltas and lags them, so
# a higher gain makes the loop oscillate.
POSITION_GAIN = 0.2
ROTATION_GAIN = 0.2
PRE_GRASP_DISTANCE_M = 0.10
LIFT_HEIGHT_M = 0.15
GRIPPER_CLOSE_S = 0.8
GRIPPER_OPEN_S = 0.5
HELD_OBJECT_TOLERANCE_M = 0.04
EARLY_CLOSE_DISTANCE_M = 0.035
GRASP_OFFSET_RANGE_M = (0.025, 0.04)
DOOR_OPEN_TARGET_RAD = 0.38  # robosuite counts the door open above 0.3 rad; its hinge stops at 0.4
DOOR_PULL_LEAD_RAD = 0.15
HANDLE_APPROACH_PITCH_RAD = math.radians(45.0)
UP = np.array([0.0, 0.0, 1.0])
# TCP frame: the fingers close along its x axis and it points (approaches) along its z axis.
_POINTING_DOWN = np.diag([1.0, -1.0, -1.0])


@dataclasses.dataclass
class _Scene:
    """What a stage sees: TCP pose, object poses, and what the episode remembers."""

    ee_position: np.ndarray
    ee_rotation: np.ndarray
    objects: dict[str, np.ndarray]
    object_rotations: dict[str, np.ndarray]
    initial_objects: dict[str, np.ndarray]
    attempt_objects: dict[str, np.ndarray]  # where the objects were when this grasp attempt began
    mistake: str | None
    grasp_offset_direction: np.ndarray  # unit vector for the "grasp_offset" mistake
    grasp_offset_m: float

    def copy(self) -> "_Scene":
        return dataclasses.replace(
            self, ee_position=self.ee_position.copy(), ee_rotation=self.ee_rotation.copy(),
            objects={k: v.copy() for k, v in self.objects.items()},
            object_rotations={k: v.copy() for k, v in self.object_rotations.items()})


@dataclasses.dataclass(frozen=True)
class _Target:
    position: np.ndarray
    rotation: np.ndarray | None  # None: keep the current orientation
    gripper: float
    max_step_m: float = MAX_STEP_M


@dataclasses.dataclass(frozen=True)
class _Stage:
    name: str
    target: Callable[[_Scene], _Target]
    done: Callable[[_Scene, _Target, float], bool]  # (scene, target, seconds in stage)
    holds: str | None = None  # the object the gripper holds during this stage
    # Move on after this long even if not done (e.g. a finger came down on the object).
    timeout_s: float = math.inf

    def finished(self, scene: _Scene, elapsed_s: float) -> bool:
        return elapsed_s >= self.timeout_s or self.done(scene, self.target(scene), elapsed_s)


# Small-matrix rotation helpers in plain numpy: scipy's per-call overhead dominated planning time.
def _rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the rotation taking orientation b to orientation a."""
    return math.acos(min(1.0, max(-1.0, (float(np.sum(a * b)) - 1.0) / 2.0)))


def _rotvec(rotation: np.ndarray) -> np.ndarray:
    angle = math.acos(min(1.0, max(-1.0, (np.trace(rotation) - 1.0) / 2.0)))
    if angle > 3.0:  # near pi the skew part vanishes; scipy handles it robustly
        return Rotation.from_matrix(rotation).as_rotvec()
    skew = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    return skew * (0.5 if angle < 1e-9 else angle / (2.0 * math.sin(angle)))


def _matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = rotvec / angle
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _closest(candidates: list[np.ndarray], current: np.ndarray) -> np.ndarray:
    return min(candidates, key=lambda rotation: _rotation_angle(rotation, current))


def _yaw_rotation(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _top_grasp(scene: _Scene, name: str) -> np.ndarray:
    """Pointing down, fingers closing along one of the cube's horizontal faces' normals."""
    yaw = math.atan2(scene.object_rotations[name][1, 0], scene.object_rotations[name][0, 0])
    return _closest([_yaw_rotation(yaw + k * math.pi / 2) @ _POINTING_DOWN for k in range(4)], scene.ee_rotation)


def _handle_grasp(scene: _Scene, name: str) -> np.ndarray:
    """Reaching into the door and down onto the handle bar, fingers closing across the bar.

    The approach is pitched down (HANDLE_APPROACH_PITCH_RAD) rather than level: a level approach
    lines the UR5e's last wrist axis up with its first (a wrist singularity) at this reach.
    """
    rotation = scene.object_rotations[name]
    into_door = rotation[:, 1] - UP * rotation[2, 1]
    into_door /= np.linalg.norm(into_door)
    approach = into_door * math.cos(HANDLE_APPROACH_PITCH_RAD) - UP * math.sin(HANDLE_APPROACH_PITCH_RAD)
    closing = np.cross(approach, rotation[:, 0])
    closing /= np.linalg.norm(closing)
    candidates = [np.column_stack([c, np.cross(approach, c), approach]) for c in (closing, -closing)]
    return _closest(candidates, scene.ee_rotation)


def _reached(scene: _Scene, target: _Target, tolerance_m: float, tolerance_rad: float = 0.06) -> bool:
    if np.linalg.norm(target.position - scene.ee_position) > tolerance_m:
        return False
    return target.rotation is None or _rotation_angle(target.rotation, scene.ee_rotation) < tolerance_rad


def _move_object_to(scene: _Scene, name: str, goal: np.ndarray) -> np.ndarray:
    """TCP target that brings the held object `name` to `goal`."""
    return scene.ee_position + (goal - scene.objects[name])


def _grasp_stages(name: str, grasp_rotation: Callable[[_Scene, str], np.ndarray]) -> list[_Stage]:
    """Pre-grasp (back along the approach axis) -> in -> close, honouring the attempt's mistake."""

    def rotation(s: _Scene) -> np.ndarray | None:
        return None if s.mistake == "skip_orientation" else grasp_rotation(s, name)

    def approach_axis(s: _Scene) -> np.ndarray:
        return grasp_rotation(s, name)[:, 2]

    def grasp_point(s: _Scene) -> np.ndarray:
        point = s.objects[name].copy()
        if s.mistake == "grasp_offset":
            # Offset from where the object was, so the gripper does not chase a pushed object.
            point = s.attempt_objects[name].copy()
            sideways = s.grasp_offset_direction - approach_axis(s) * (s.grasp_offset_direction @ approach_axis(s))
            point += sideways / np.linalg.norm(sideways) * s.grasp_offset_m
        if s.mistake == "early_close":
            point -= approach_axis(s) * EARLY_CLOSE_DISTANCE_M
        return point

    return [
        _Stage(f"pre_grasp_{name}",
               lambda s: _Target(grasp_point(s) - approach_axis(s) * PRE_GRASP_DISTANCE_M, rotation(s), 0.0),
               lambda s, t, elapsed: _reached(s, t, 0.012), timeout_s=8.0),
        _Stage(f"approach_{name}",
               lambda s: _Target(grasp_point(s), rotation(s), 0.0, FINE_STEP_M),
               lambda s, t, elapsed: _reached(s, t, 0.005, tolerance_rad=0.1), timeout_s=3.0),
        _Stage(f"close_on_{name}",
               lambda s: _Target(grasp_point(s), None, 1.0, FINE_STEP_M),
               lambda s, t, elapsed: elapsed >= GRIPPER_CLOSE_S),
    ]


def _lift_stages() -> list[_Stage]:
    def lift(s: _Scene) -> _Target:
        goal = s.objects["cube"].copy()
        goal[2] = s.initial_objects["cube"][2] + LIFT_HEIGHT_M
        return _Target(_move_object_to(s, "cube", goal), None, 1.0)

    return _grasp_stages("cube", _top_grasp) + [_Stage("lift", lift, lambda s, t, e: False, holds="cube")]


def _stack_stages() -> list[_Stage]:
    half = StackTask.cube_half_sizes
    on_b_height = half["cube_a"] + half["cube_b"]

    def over_b(s: _Scene, clearance: float) -> np.ndarray:
        return s.objects["cube_b"] + np.array([0.0, 0.0, on_b_height + clearance])

    def raise_a(s: _Scene) -> _Target:
        goal = s.objects["cube_a"].copy()
        goal[2] = over_b(s, 0.06)[2]
        return _Target(_move_object_to(s, "cube_a", goal), None, 1.0)

    def carry_a(s: _Scene, clearance: float, max_step_m: float = MAX_STEP_M) -> _Target:
        # Turning the gripper to cube_b's faces lines cube_a up with them (it was grasped face-on).
        return _Target(_move_object_to(s, "cube_a", over_b(s, clearance)), _top_grasp(s, "cube_b"), 1.0, max_step_m)

    return _grasp_stages("cube_a", _top_grasp) + [
        _Stage("raise", raise_a, lambda s, t, e: _reached(s, t, 0.015), holds="cube_a"),
        _Stage("over_cube_b", lambda s: carry_a(s, 0.06), lambda s, t, e: _reached(s, t, 0.008), holds="cube_a"),
        _Stage("lower_onto_cube_b", lambda s: carry_a(s, 0.008, FINE_STEP_M), lambda s, t, e: _reached(s, t, 0.005),
               holds="cube_a"),
        _Stage("release", lambda s: _Target(s.ee_position.copy(), None, 0.0),
               lambda s, t, elapsed: elapsed >= GRIPPER_OPEN_S),
        _Stage("retreat", lambda s: _Target(over_b(s, 0.12), None, 0.0), lambda s, t, e: False),
    ]


def _door_stages() -> list[_Stage]:
    def door_angle(s: _Scene) -> float:
        """How far the handle has swung about the hinge since the episode started."""
        now = s.objects["handle"] - s.objects["hinge"]
        start = s.initial_objects["handle"] - s.initial_objects["hinge"]
        return math.atan2(start[0] * now[1] - start[1] * now[0], start[0] * now[0] + start[1] * now[1])

    def pull(s: _Scene) -> _Target:
        angle = door_angle(s)
        lead = min(angle + DOOR_PULL_LEAD_RAD, DOOR_OPEN_TARGET_RAD) - angle
        swing = _yaw_rotation(lead)
        hinge = s.objects["hinge"]
        handle_goal = hinge + swing @ (s.objects["handle"] - hinge)
        return _Target(_move_object_to(s, "handle", handle_goal), swing @ _handle_grasp(s, "handle"), 1.0)

    return _grasp_stages("handle", _handle_grasp) + [_Stage("pull_open", pull, lambda s, t, e: False, holds="handle")]


_TASK_STAGES: dict[str, Callable[[], list[_Stage]]] = {
    "lift": _lift_stages,
    "stack": _stack_stages,
    "door": _door_stages,
}


class ScriptedExpert:
    """Receding-horizon scripted policy for one task; call reset(seed) at every episode start."""

    def __init__(self, task: str, control_period_s: float, *, horizon: int = 10, noise_std: float = 0.0,
                 skill: float = 1.0, seed: int = 0):
        if task not in _TASK_STAGES:
            raise ValueError(f"no scripted expert for task {task!r}; available: {sorted(_TASK_STAGES)}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 <= skill <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {skill}")
        if noise_std < 0.0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.task = task
        self.control_period_s = float(control_period_s)
        self.horizon = int(horizon)
        self.noise_std = float(noise_std)
        self.skill = float(skill)
        self._stages = _TASK_STAGES[task]()
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._stage_started_s: float | None = None
        self._initial_objects: dict[str, np.ndarray] | None = None
        self._attempt_objects: dict[str, np.ndarray] | None = None
        self.attempts = 0
        self._start_attempt()

    @property
    def stage(self) -> str:
        return self._stages[self._stage_index].name

    @property
    def mistake(self) -> str | None:
        """The deliberate mistake of the current grasp attempt, if any."""
        return self._mistake

    def _start_attempt(self, objects: dict[str, np.ndarray] | None = None) -> None:
        self.attempts += 1
        self._attempt_objects = objects
        self._stage_index = 0
        self._mistake = str(self._rng.choice(MISTAKES)) if self._rng.random() >= self.skill else None
        direction = self._rng.normal(size=3)
        self._grasp_offset_direction = direction / np.linalg.norm(direction)
        self._grasp_offset_m = float(self._rng.uniform(*GRASP_OFFSET_RANGE_M))

    def plan(self, ee_pose: Pose, object_poses: dict[str, Pose], time_s: float) -> np.ndarray:
        """An (horizon, 7) float32 chunk of ee_delta_7d actions from the current poses."""
        if self._initial_objects is None:
            self._initial_objects = {k: np.array(p.position, float) for k, p in object_poses.items()}
        if self._attempt_objects is None:
            self._attempt_objects = {k: np.array(p.position, float) for k, p in object_poses.items()}
        scene = _Scene(
            ee_position=np.array(ee_pose.position, float),
            ee_rotation=Rotation.from_quat(ee_pose.quaternion).as_matrix(),
            objects={k: np.array(p.position, float) for k, p in object_poses.items()},
            object_rotations={k: Rotation.from_quat(p.quaternion).as_matrix() for k, p in object_poses.items()},
            initial_objects=self._initial_objects,
            attempt_objects=self._attempt_objects,
            mistake=self._mistake,
            grasp_offset_direction=self._grasp_offset_direction,
            grasp_offset_m=self._grasp_offset_m,
        )
        self._update_stage(scene, time_s)
        return self._roll_out(scene, time_s - self._stage_started_s)

    def _update_stage(self, scene: _Scene, time_s: float) -> None:
        if self._stage_started_s is None:
            self._stage_started_s = time_s
        stage = self._stages[self._stage_index]
        if stage.holds is not None and not self._is_held(scene, stage.holds):
            self._start_attempt({k: v.copy() for k, v in scene.objects.items()})
            scene.attempt_objects, scene.mistake = self._attempt_objects, self._mistake
            scene.grasp_offset_direction, scene.grasp_offset_m = self._grasp_offset_direction, self._grasp_offset_m
            self._stage_started_s = time_s
        elif stage.finished(scene, time_s - self._stage_started_s):
            self._stage_index = min(self._stage_index + 1, len(self._stages) - 1)
            self._stage_started_s = time_s

    @staticmethod
    def _is_held(scene: _Scene, name: str) -> bool:
        return bool(np.linalg.norm(scene.objects[name] - scene.ee_position) < HELD_OBJECT_TOLERANCE_M)

    def _roll_out(self, scene: _Scene, elapsed_s: float) -> np.ndarray:
        predicted = scene.copy()
        stage_index = self._stage_index
        chunk = np.zeros((self.horizon, 7), dtype=np.float32)
        for step in range(self.horizon):
            stage = self._stages[stage_index]
            target = stage.target(predicted)
            translation, rotation = _servo(predicted, target)
            chunk[step] = [*translation, *rotation, target.gripper]
            _predict(predicted, translation, rotation, stage.holds)
            elapsed_s += self.control_period_s
            if stage_index + 1 < len(self._stages) and stage.finished(predicted, elapsed_s):
                stage_index += 1
                elapsed_s = 0.0
        if self.noise_std > 0.0:
            chunk[:, :6] += self._rng.normal(0.0, self.noise_std, size=(self.horizon, 6)).astype(np.float32)
        return chunk


def _servo(scene: _Scene, target: _Target) -> tuple[np.ndarray, np.ndarray]:
    """A proportional step toward the target pose, capped per step."""
    translation = POSITION_GAIN * (target.position - scene.ee_position)
    norm = np.linalg.norm(translation)
    if norm > target.max_step_m:
        translation *= target.max_step_m / norm
    if target.rotation is None:
        return translation, np.zeros(3)
    rotation = ROTATION_GAIN * _rotvec(target.rotation @ scene.ee_rotation.T)
    norm = np.linalg.norm(rotation)
    if norm > MAX_ROTATION_STEP_RAD:
        rotation *= MAX_ROTATION_STEP_RAD / norm
    return translation, rotation


def _predict(scene: _Scene, translation: np.ndarray, rotation: np.ndarray, held: str | None) -> None:
    """Assume the TCP (and a held object) follows the deltas exactly."""
    turn = _matrix(rotation)
    scene.ee_rotation = turn @ scene.ee_rotation
    if held is not None:
        # The held object turns with the gripper about the TCP.
        scene.objects[held] = scene.ee_position + turn @ (scene.objects[held] - scene.ee_position) + translation
        scene.object_rotations[held] = turn @ scene.object_rotations[held]
    scene.ee_position += translation
