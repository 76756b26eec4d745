"""Scripted-expert success rates and sim speed, in the pure-Python loop (no ROS).

    python -m prophrl_sim.benchmark --robot panda_sim ur5e_sim --task lift stack door --seeds 20
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from prophrl_sim.arm_sim import ArmSim
from prophrl_sim.expert import ScriptedExpert
from prophrl_sim.tasks import TASKS

# The expert node re-plans at 10 Hz while the arm runs at 20 Hz: two steps of each chunk run.
STEPS_PER_PLAN = 2


def run_episode(sim: ArmSim, expert: ScriptedExpert, seed: int, max_steps: int,
                steps_per_plan: int = STEPS_PER_PLAN) -> tuple[bool, int]:
    """One closed-loop episode; returns (succeeded, steps taken)."""
    observation = sim.reset(seed)
    expert.reset(seed)
    steps = 0
    while steps < max_steps:
        chunk = expert.plan(observation.ee_pose, observation.object_poses, observation.time_s)
        for action in chunk[:steps_per_plan]:
            sim.step_ee_delta(action[:3], action[3:6], float(action[6]))
            steps += 1
        observation = sim.observe()
        if observation.success:
            return True, steps
    return False, steps


def measure_speed(sim: ArmSim, steps: int = 200, renders: int = 50) -> tuple[float, float]:
    """(control steps per second, rendered frames per second)."""
    sim.reset(0)
    start = time.perf_counter()
    for _ in range(steps):
        sim.step_ee_delta(np.zeros(3), np.zeros(3), 0.0)
        sim.observe()
    step_rate = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(renders):
        sim.render()
    return step_rate, renders / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robot", nargs="+", default=["panda_sim", "ur5e_sim"])
    parser.add_argument("--task", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--skill", type=float, default=1.0)
    parser.add_argument("--noise-std", type=float, default=0.0)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    for robot in args.robot:
        for task in args.task:
            with ArmSim(robot, task, image_width=args.image_size, image_height=args.image_size) as sim:
                expert = ScriptedExpert(task, sim.control_period_s, noise_std=args.noise_std, skill=args.skill)
                results = [run_episode(sim, expert, seed, args.max_steps) for seed in range(args.seeds)]
                step_rate, render_fps = measure_speed(sim)
            successes = [steps for succeeded, steps in results if succeeded]
            mean_steps = f"{np.mean(successes):.0f}" if successes else "-"
            print(f"{robot:10s} {task:6s} success {len(successes)}/{args.seeds} (mean {mean_steps} steps)  "
                  f"sim {step_rate:.0f} steps/s  render {render_fps:.0f} fps at {args.image_size} px", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
