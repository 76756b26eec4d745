"""Real-arm kinematics from the robot configs: accuracy against robosuite's MuJoCo models, and the IK step.

For franka_fr3 and ur5e: the largest position / orientation difference between our forward kinematics
(the configs' published DH parameters) and MuJoCo's kinematics of robosuite's Panda and UR5e models over
random joint configurations; then the executor's IK step (config kinematics, damped least squares):
success rate, reached-target error and solve time for random end-effector steps up to the configs'
per-step limits, from random configurations around home.

    python bench/real_robot_kinematics.py [--configs 500] [--steps 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_common.kinematics import KinematicChain, pose_matrix
from prophrl_common.robots import load_robot_config
from prophrl_common.tables import print_table

ROBOSUITE_ROBOTS = os.path.join(importlib.util.find_spec("robosuite").submodule_search_locations[0],
                                "models", "assets", "robots")
# robot config, robosuite model, robosuite's right_hand frame in the config's ee_frame
MODELS = [("franka_fr3", "panda", pose_matrix((0, 0, -0.1034, 0, 0, 0))), ("ur5e", "ur5e", np.eye(4))]


def fk_errors(robot, chain, model_name, hand_in_ee, configs, rng):
    model = mujoco.MjModel.from_xml_path(os.path.join(ROBOSUITE_ROBOTS, model_name, "robot.xml"))
    data = mujoco.MjData(model)
    lower = np.maximum(robot.joint_position_lower, -np.pi)
    upper = np.minimum(robot.joint_position_upper, np.pi)
    pos, rot = [], []
    for _ in range(configs):
        q = rng.uniform(lower, upper)
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        base, hand = model.body("base").id, model.body("right_hand").id
        rb = data.xmat[base].reshape(3, 3)
        ours = chain.forward(q) @ hand_in_ee
        pos.append(np.linalg.norm(ours[:3, 3] - rb.T @ (data.xpos[hand] - data.xpos[base])))
        rot.append(Rotation.from_matrix(ours[:3, :3].T @ rb.T @ data.xmat[hand].reshape(3, 3)).magnitude())
    return np.array(pos), np.array(rot)


def ik_steps(robot, chain, steps, rng):
    solved, errors, times = 0, [], []
    for _ in range(steps):
        q = np.clip(np.array(robot.home_position) + rng.normal(0, 0.2, robot.num_joints),
                    robot.joint_position_lower, robot.joint_position_upper)
        translation = rng.normal(size=3)
        translation *= rng.uniform(0, robot.max_ee_translation_per_step_m) / np.linalg.norm(translation)
        rotation = rng.normal(size=3)
        rotation *= rng.uniform(0, robot.max_ee_rotation_per_step_rad) / np.linalg.norm(rotation)
        start = time.perf_counter()
        solution = chain.solve_step(q, translation, rotation)
        times.append(time.perf_counter() - start)
        if solution is not None:
            solved += 1
            before, after = chain.forward(q), chain.forward(solution)
            errors.append(np.linalg.norm(after[:3, 3] - before[:3, 3] - translation))
    return solved, np.array(errors), np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for robot_name, model_name, hand_in_ee in MODELS:
        robot = load_robot_config(robot_name)
        chain = KinematicChain.for_robot(robot)
        rng = np.random.default_rng(args.seed)
        pos, rot = fk_errors(robot, chain, model_name, hand_in_ee, args.configs, rng)
        solved, errors, times = ik_steps(robot, chain, args.steps, rng)
        rows.append([robot_name, f"robosuite {model_name}", f"{pos.max() * 1e3:.2f}", f"{np.degrees(rot.max()):.3f}",
                     f"{solved}/{args.steps}", f"{errors.max() * 1e3:.3f}" if len(errors) else "-",
                     f"{np.median(times) * 1e3:.2f}", f"{np.percentile(times, 99) * 1e3:.2f}"])
    print_table(f"forward kinematics vs MuJoCo over {args.configs} random configurations; IK over {args.steps} "
                "random per-step-limit steps",
                ["robot", "reference", "FK max pos err mm", "FK max rot err deg", "IK solved",
                 "IK max pos err mm", "IK p50 ms", "IK p99 ms"], rows)


if __name__ == "__main__":
    main()
