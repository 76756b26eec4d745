"""Table-top tasks on robosuite scenes: object placement, colours, instruction and ground-truth poses.

Each task names the objects whose poses the sim publishes as ground truth (in that order), the
robosuite environment it builds on, and how a seed randomises it. Object placement comes from
robosuite's placement sampler (drawing from a generator the sim re-seeds every episode); colours
are drawn from a named palette so the instruction can say which object is meant.
"""

from __future__ import annotations

import abc

import mujoco
import numpy as np
from robosuite.utils.placement_samplers import UniformRandomSampler

# Named colours (RGB); each episode draws from these so instructions can name objects.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.65, 0.20),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.20, 0.80),
    "cyan": (0.10, 0.80, 0.85),
}
# Each channel of a drawn colour is perturbed by up to this much, so shades vary within a name.
SHADE_JITTER = 0.06

# Centre of the table top in the MuJoCo world (robosuite's table_offset for Lift and Stack; Door's is fixed).
TABLE_TOP_WORLD = np.array([0.0, 0.0, 0.8])
DOOR_TABLE_TOP_WORLD = np.array([-0.2, -0.35, 0.8])


class Task(abc.ABC):
    name: str
    robosuite_env: str
    # Ground-truth objects, in the order of SimObservation.object_poses / the PoseArray topic.
    object_names: tuple[str, ...]
    default_camera: str = "agentview"

    def robosuite_kwargs(self, placement_rng: np.random.Generator) -> dict:
        """Extra suite.make() arguments; placement_rng is re-seeded by the sim every episode."""
        return {"placement_initializer": self._placement_sampler(placement_rng)}

    @abc.abstractmethod
    def _placement_sampler(self, rng: np.random.Generator) -> UniformRandomSampler:
        ...

    @abc.abstractmethod
    def colour_objects(self, env, rng: np.random.Generator) -> dict[str, str]:
        """Recolour the scene's objects for this episode; returns object name -> colour name."""

    @abc.abstractmethod
    def instruction(self, colours: dict[str, str]) -> str:
        ...

    @abc.abstractmethod
    def object_poses_world(self, env) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Object name -> (position (3,), rotation matrix (3, 3)) in the MuJoCo world frame."""


def _draw_colours(rng: np.random.Generator, count: int) -> list[tuple[str, np.ndarray]]:
    names = rng.choice(sorted(PALETTE), size=count, replace=False)
    colours = []
    for name in names:
        rgb = np.clip(np.array(PALETTE[name]) + rng.uniform(-SHADE_JITTER, SHADE_JITTER, 3), 0.0, 1.0)
        colours.append((str(name), rgb))
    return colours


def _paint_geoms(model, geom_names: list[str], rgb: np.ndarray) -> None:
    """Give geoms a flat colour (their texture would otherwise tint it)."""
    for geom_name in geom_names:
        geom_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom_name)
        model.geom_matid[geom_id] = -1
        model.geom_rgba[geom_id, :3] = rgb
        model.geom_rgba[geom_id, 3] = 1.0


def _body_pose(env, body_name: str) -> tuple[np.ndarray, np.ndarray]:
    body_id = env.sim.model.body_name2id(body_name)
    return np.array(env.sim.data.body_xpos[body_id]), np.array(env.sim.data.body_xmat[body_id]).reshape(3, 3)


class LiftTask(Task):
    name = "lift"
    robosuite_env = "Lift"
    object_names = ("cube",)

    def _placement_sampler(self, rng):
        return UniformRandomSampler(
            name="ObjectSampler", x_range=[-0.08, 0.08], y_range=[-0.08, 0.08], rotation=None,
            ensure_object_boundary_in_range=False, ensure_valid_placement=True,
            reference_pos=TABLE_TOP_WORLD, z_offset=0.01, rng=rng,
        )

    def colour_objects(self, env, rng):
        ((name, rgb),) = _draw_colours(rng, 1)
        _paint_geoms(env.sim.model._model, list(env.cube.visual_geoms), rgb)
        return {"cube": name}

    def instruction(self, colours):
        return f"lift the {colours['cube']} cube"

    def object_poses_world(self, env):
        return {"cube": _body_pose(env, env.cube.root_body)}


class StackTask(Task):
    name = "stack"
    robosuite_env = "Stack"
    # cube_a is picked up and placed on cube_b.
    object_names = ("cube_a", "cube_b")
    cube_half_sizes = {"cube_a": 0.02, "cube_b": 0.025}  # robosuite's Stack cubes (m)

    def _placement_sampler(self, rng):
        return UniformRandomSampler(
            name="ObjectSampler", x_range=[-0.10, 0.10], y_range=[-0.10, 0.10], rotation=None,
            ensure_object_boundary_in_range=False, ensure_valid_placement=True,
            reference_pos=TABLE_TOP_WORLD, z_offset=0.01, rng=rng,
        )

    def colour_objects(self, env, rng):
        (name_a, rgb_a), (name_b, rgb_b) = _draw_colours(rng, 2)
        model = env.sim.model._model
        _paint_geoms(model, list(env.cubeA.visual_geoms), rgb_a)
        _paint_geoms(model, list(env.cubeB.visual_geoms), rgb_b)
        return {"cube_a": name_a, "cube_b": name_b}

    def instruction(self, colours):
        return f"stack the {colours['cube_a']} cube on the {colours['cube_b']} cube"

    def object_poses_world(self, env):
        return {"cube_a": _body_pose(env, env.cubeA.root_body), "cube_b": _body_pose(env, env.cubeB.root_body)}


class DoorTask(Task):
    """robosuite Door without the latch: pull the handle until the door is > 0.3 rad open."""

    name = "door"
    robosuite_env = "Door"
    # handle: robosuite's handle site on the lever bar; hinge: on the hinge axis, turning with the door.
    object_names = ("handle", "hinge")
    default_camera = "sideview"  # in robosuite's agentview for Door the arm hides the door

    def robosuite_kwargs(self, placement_rng):
        return {**super().robosuite_kwargs(placement_rng), "use_latch": False}

    def _placement_sampler(self, rng):
        return UniformRandomSampler(
            name="ObjectSampler", x_range=[0.05, 0.10], y_range=[-0.03, 0.03],
            rotation=(-np.pi / 2.0 - 0.25, -np.pi / 2.0), rotation_axis="z",
            ensure_object_boundary_in_range=False, ensure_valid_placement=True,
            reference_pos=DOOR_TABLE_TOP_WORLD, rng=rng,
        )

    def colour_objects(self, env, rng):
        ((name, rgb),) = _draw_colours(rng, 1)
        _paint_geoms(env.sim.model._model, [f"{env.door.naming_prefix}panel"], rgb)
        return {"door": name}

    def instruction(self, colours):
        return "open the door"

    def object_poses_world(self, env):
        handle_site = env.sim.model.site_name2id(env.door.important_sites["handle"])
        handle = (np.array(env.sim.data.site_xpos[handle_site]),
                  np.array(env.sim.data.site_xmat[handle_site]).reshape(3, 3))
        hinge_joint = env.sim.model.joint_name2id(env.door.joints[0])
        door_body = env.sim.model.body_name2id(f"{env.door.naming_prefix}door")
        hinge = (np.array(env.sim.data.xanchor[hinge_joint]),
                 np.array(env.sim.data.body_xmat[door_body]).reshape(3, 3))
        return {"handle": handle, "hinge": hinge}


TASKS: dict[str, Task] = {task.name: task for task in (LiftTask(), StackTask(), DoorTask())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}") from None
