"""Demonstration collection in the physics sim, in process: scripted expert -> rosbag2 bags.

`prophrl collect --direct` uses this (fast, deterministic, no ROS graph); without --direct the
same episodes run through the live nodes (sim, executor, expert/teleop, recorder).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prophrl_policy.episode_bags import EpisodeBagRecorder
from prophrl_policy.sim_rollout import ExpertController, run_episode


@dataclasses.dataclass(frozen=True)
class CollectSettings:
    robot: str = "panda_sim"
    task: str = "lift"
    episodes: int = 10
    first_seed: int = 0
    max_steps: int = 300
    replan_steps: int = 2
    noise_std: float = 0.0
    skill: float = 1.0
    camera: str = "agentview"
    image_size: int = 128
    camera_jitter_m: float = 0.0


def collect_direct(settings: CollectSettings, out_dir: str | Path, show_progress: bool = True) -> list[dict]:
    """Run `episodes` seeded expert episodes and write one bag each under out_dir; return a summary row each."""
    from tqdm import tqdm

    from prophrl_sim.arm_sim import ArmSim

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = ArmSim(settings.robot, settings.task, camera=settings.camera, image_width=settings.image_size,
                 image_height=settings.image_size, camera_position_jitter_m=settings.camera_jitter_m)
    expert = ExpertController(settings.task, sim.control_period_s, noise_std=settings.noise_std, skill=settings.skill)
    rows = []
    bar = tqdm(range(settings.first_seed, settings.first_seed + settings.episodes), desc=f"collect {settings.task}",
               unit="episode", disable=not show_progress)
    successes = 0
    try:
        for seed in bar:
            start = time.perf_counter()
            path = out_dir / f"{settings.robot}_{settings.task}_seed{seed:05d}"
            recorder = None

            def record(step, _path=path):
                nonlocal recorder
                if recorder is None:  # the instruction is known once the episode has been reset
                    recorder = EpisodeBagRecorder(_path, sim, settings.task, seed)
                recorder(step)

            outcome = run_episode(sim, expert, seed, max_steps=settings.max_steps,
                                  replan_steps=settings.replan_steps, on_step=record)
            bag = recorder.close(outcome)
            successes += outcome.success
            rows.append({"seed": seed, "success": outcome.success, "steps": outcome.steps, "bag": str(bag),
                         "instruction": outcome.instruction, "seconds": time.perf_counter() - start})
            bar.set_postfix(success=f"{successes}/{len(rows)}")
    finally:
        sim.close()
    return rows
