"""Ground-truth evaluation of policies in the physics sim on seeded held-out initial states."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from prophrl_common.devices import torch_device
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer.held_out import EVAL_MAX_STEPS, HELD_OUT_SEED_BASE
from prophrl_trainer.sim_rollout import PolicyController, run_episode



@dataclasses.dataclass(frozen=True)
class EvalSettings:
    robot: str = "panda_sim"
    task: str = "lift"
    episodes: int = 20
    first_seed: int = HELD_OUT_SEED_BASE
    max_steps: int = EVAL_MAX_STEPS
    replan_steps: int = 2
    camera: str = ""             # empty: the task's default view (ArmSim), as the sim node and collection use
    image_size: int = 128
    mode: str = "ode"
    device: str = "cpu"          # where the policy runs (the sim always runs on the CPU)
    num_steps: int = 0           # denoising steps per chunk (0: the checkpoint's own sampler)


@dataclasses.dataclass
class EvalResult:
    settings: EvalSettings
    successes: list[bool]
    steps: list[int]

    @property
    def success_rate(self) -> float:
        return sum(self.successes) / max(len(self.successes), 1)


def evaluate_policy(policy: VLAPolicy | str | Path, settings: EvalSettings, policy_seed: int = 0,
                    show_progress: bool = True) -> EvalResult:
    from tqdm import tqdm

    from prophrl_sim.arm_sim import ArmSim

    device = torch_device(settings.device)
    if not isinstance(policy, VLAPolicy):
        policy = VLAPolicy.from_pretrained(policy, map_location=str(device))
    policy = policy.to(device)
    sim = ArmSim(settings.robot, settings.task, camera=settings.camera, image_width=settings.image_size,
                 image_height=settings.image_size)
    controller = PolicyController(policy, mode=settings.mode, seed=policy_seed, num_steps=settings.num_steps)
    successes, steps = [], []
    try:
        bar = tqdm(range(settings.first_seed, settings.first_seed + settings.episodes),
                   desc=f"eval {settings.robot}/{settings.task}", unit="episode", disable=not show_progress)
        for seed in bar:
            outcome = run_episode(sim, controller, seed, max_steps=settings.max_steps,
                                  replan_steps=settings.replan_steps, steps_after_success=0)
            successes.append(outcome.success)
            steps.append(outcome.steps)
            bar.set_postfix(success=f"{sum(successes)}/{len(successes)}")
    finally:
        sim.close()
    return EvalResult(settings, successes, steps)


def _evaluate_job(policy_dir: str, settings: EvalSettings, policy_seed: int, show_progress: bool) -> list[bool]:
    return evaluate_policy(policy_dir, settings, policy_seed=policy_seed, show_progress=show_progress).successes


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def evaluate_jobs(jobs: list[tuple[str, EvalSettings, int]], workers: int = 1,
                  show_progress: bool = True) -> list[list[bool]]:
    """Every (policy_dir, settings, policy_seed) job's per-episode successes, in order; `workers` > 1 runs
    them in that many spawned processes of one torch thread each (every job owns its sim; same results)."""
    if workers <= 1 or len(jobs) <= 1:
        return [_evaluate_job(*job, show_progress) for job in jobs]
    from tqdm import tqdm

    from prophrl_common.process_pool import run_in_processes

    with tqdm(total=len(jobs), desc=f"eval ({workers} processes)", unit="policy", disable=not show_progress) as bar:
        return run_in_processes(_evaluate_job, [(*job, False) for job in jobs], min(workers, len(jobs)),
                                initializer=_one_torch_thread, on_result=lambda _: bar.update())


def mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
