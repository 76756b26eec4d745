"""Episode collection in the physics sim, in process: scripted expert (or a policy) -> rosbag2 bags.

`prophrl collect --direct` uses this (fast, deterministic, no ROS graph); without --direct the
same episodes run through the live nodes (sim, executor, expert/teleop, recorder). A rerun into the same
folder continues: finished episodes are kept, an interrupted one is recorded again.

`prophrl collect --direct --policy CKPT` records a policy's own episodes instead, labelled by the sim's
success: e.g. an RL policy's failures, to train the reward judge on what that policy does (hard negatives).
Their bags carry custom_data "controller": "policy" and "policy": CKPT.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import check_writable_dir

from prophrl_data.episode_bags import EpisodeBagRecorder
from prophrl_trainer.sim_rollout import ExpertController, PolicyController, run_episode


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
    camera: str = ""          # empty: the task's default view (ArmSim), as the sim node uses
    image_size: int = 128
    camera_jitter_m: float = 0.0
    policy: str = ""          # a policy checkpoint directory: it acts (deterministic ODE sampling), not the expert
    device: str = "cpu"       # where the policy runs

    @property
    def controller_meta(self) -> dict[str, str]:
        """custom_data naming who acted, when it was not the scripted expert."""
        return {"controller": "policy", "policy": str(self.policy)} if self.policy else {}


def bag_name(settings: CollectSettings, seed: int) -> str:
    return f"{settings.robot}_{settings.task}_seed{seed:05d}"


def finished_episode(path: Path, settings: CollectSettings, seed: int) -> dict | None:
    """The summary row of a bag this collection finished for `seed` (a rerun keeps it), None for the bag of an
    interrupted episode of this collection (a rerun records the episode again). Anything else at `path` is a
    ConfigError: a rerun never touches what it did not write."""
    from prophrl_common.bag_error import BagError
    from prophrl_data.bag_reader import open_bag

    try:
        bag = open_bag(path)
        custom = bag.custom_data
    except BagError:
        bag, custom = None, {}
    ours = (custom.get("source") == "sim_rollout" and custom.get("seed") == str(seed)
            and custom.get("robot") == settings.robot and custom.get("task") == settings.task
            and all(custom.get(k) == settings.controller_meta.get(k) for k in ("controller", "policy")))
    if bag is not None and ours and custom.get("end_reason") in ("SUCCESS", "FAILURE") and not bag.recovered:
        return {"seed": seed, "success": custom.get("success") == "true", "steps": int(custom.get("num_steps", 0)),
                "bag": str(path), "instruction": custom.get("instruction", ""), "seconds": 0.0, "resumed": True}
    own_files = {f"{path.name}_0.mcap", "metadata.yaml"}
    if path.is_dir() and (ours or not custom) and {p.name for p in path.iterdir()} <= own_files:
        return None
    raise ConfigError(f"{path} exists and is not an episode this collection recorded for seed {seed}: move it "
                      "away or choose another --out")


def collect_direct(settings: CollectSettings, out_dir: str | Path, show_progress: bool = True) -> list[dict]:
    """Run `episodes` seeded expert episodes and write one bag each under out_dir; return a summary row each.

    Resumable: a seed whose bag this collection already finished is kept (its row has "resumed": True), the
    bag of an interrupted episode is recorded again, anything else in the way is a ConfigError before any
    episode runs.
    """
    from tqdm import tqdm

    from prophrl_sim.arm_sim import ArmSim

    out_dir = check_writable_dir(out_dir, inputs=[settings.policy or None])
    policy = _checked_policy(settings) if settings.policy else None   # a policy that does not fit: before any write
    seeds = range(settings.first_seed, settings.first_seed + settings.episodes)
    finished = {seed: finished_episode(out_dir / bag_name(settings, seed), settings, seed)
                for seed in seeds if (out_dir / bag_name(settings, seed)).exists()}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if all(finished.get(seed) is not None for seed in seeds):
        return [finished[seed] for seed in seeds]
    sim = ArmSim(settings.robot, settings.task, camera=settings.camera, image_width=settings.image_size,
                 image_height=settings.image_size, camera_position_jitter_m=settings.camera_jitter_m)
    controller = (PolicyController(policy) if policy is not None else
                  ExpertController(settings.task, sim.control_period_s, noise_std=settings.noise_std,
                                   skill=settings.skill))
    bar = tqdm(seeds, desc=f"collect {settings.task}", unit="episode", disable=not show_progress)
    successes = 0
    try:
        for seed in bar:
            start = time.perf_counter()
            path = out_dir / bag_name(settings, seed)
            if finished.get(seed) is not None:
                rows.append(finished[seed])
                successes += finished[seed]["success"]
                continue
            if seed in finished:  # the bag of an interrupted episode: recorded again from the same seed
                shutil.rmtree(path)
            recorder = None

            def record(step, _path=path):
                nonlocal recorder
                if recorder is None:  # the instruction is known once the episode has been reset
                    recorder = EpisodeBagRecorder(_path, sim, settings.task, seed,
                                                  controller=settings.controller_meta)
                recorder(step)

            outcome = run_episode(sim, controller, seed, max_steps=settings.max_steps,
                                  replan_steps=settings.replan_steps, on_step=record)
            bag = recorder.close(outcome)
            successes += outcome.success
            rows.append({"seed": seed, "success": outcome.success, "steps": outcome.steps, "bag": str(bag),
                         "instruction": outcome.instruction, "seconds": time.perf_counter() - start})
            bar.set_postfix(success=f"{successes}/{len(rows)}")
    finally:
        sim.close()
    return rows


def _checked_policy(settings: CollectSettings):
    """The VLAPolicy of settings.policy, checked against the robot and action space it is about to drive."""
    from prophrl_common.chunks import POLICY_STATE_NAMES
    from prophrl_common.devices import torch_device
    from prophrl_policy.embodiment import check_embodiment
    from prophrl_policy.modeling_vla import VLAPolicy

    device = torch_device(settings.device)
    policy = VLAPolicy.from_pretrained(settings.policy, map_location=str(device)).to(device)
    try:
        check_embodiment(policy.embodiment, settings.robot, "ee_delta_7d", POLICY_STATE_NAMES)
    except ConfigError as exc:
        raise ConfigError(f"--policy {settings.policy}: {exc}") from None
    return policy
