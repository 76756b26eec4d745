"""Few-step distillation of a policy's flow-matching sampler (progressive distillation, Salimans & Ho 2022, for an
Euler flow sampler).

A policy's ODE carries noise to an action chunk along a curved path, so its Euler sampler needs about ten steps
(bench/denoising_steps.py). A student sampled with K steps, K dividing the teacher's K_T, takes one step where the
teacher takes m = K_T / K. It is trained so that its one Euler step from a point x at the start of one of its
intervals [sigma, sigma_next] lands where the teacher's m steps from x land: its target velocity is
(x after the teacher's m steps - x) / (sigma_next - sigma). The points x are drawn at the student's grid times from
the interpolation a flow is trained on, x = sigma eps + (1 - sigma) a, with a a chunk the teacher sampled on a
training observation and fresh noise eps, so an RL-trained teacher is distilled on its own actions, not the
demonstrations'. The student starts from the teacher's weights: it learns each interval's curvature, a small
correction, and its checkpoint records K as its sampler (`num_inference_steps`), which the policy node and evaluation
then use. Distil last, the checkpoint a robot will run: RL samples with its own config's steps
(RLConfig.denoising_steps) and its checkpoints record those.

Episodes are split by position: every `validation_every`-th one (at least one) only measures the student, never
trained on: the RMS distance of its K-step chunks to the teacher's own chunks for the same noise, beside the
teacher's K-step sampler's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from prophrl_common.config_io import ConfigError, require_finite_numbers
from prophrl_common.devices import torch_device
from prophrl_common.outputs import OutputKind, check_output_dir
from prophrl_nn import flow_matching as fm
from prophrl_nn.optimization import clipped_step, warmup_cosine
from prophrl_policy.modeling_vla import CHECKPOINT_FILES, Observation, VLAPolicy
from prophrl_trainer.sft import DemoData


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    num_steps: int = 5                # the student's Euler steps per chunk: it must divide the teacher's
    teacher_steps: int = 0            # the teacher's (0: its checkpoint's sampler)
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    validation_every: int = 10        # every n-th episode measures the student and is not trained on
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        require_finite_numbers(self, "distill config")
        for key in ("num_steps", "steps", "batch_size", "validation_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"distill config: {key} must be >= 1, got {getattr(self, key)}")
        if self.teacher_steps < 0:
            raise ConfigError(f"distill config: teacher_steps must be >= 0 (0: the teacher's own), "
                              f"got {self.teacher_steps}")
        if not (self.learning_rate > 0 and self.grad_clip > 0) or self.warmup_steps < 0:
            raise ConfigError("distill config: learning_rate and grad_clip must be positive, warmup_steps >= 0")


# What `prophrl policy distill --out` writes: the student policy checkpoint and distill.json.
DISTILL_OUTPUT = OutputKind("distilled policy checkpoint", CHECKPOINT_FILES | {"distill.json"})


@dataclasses.dataclass
class TeacherChunks:
    """Noise draws and the chunks the teacher's ODE makes of them (model space, (N, H, action_dim)) on observation
    rows of the data (`rows`, (N,))."""

    rows: np.ndarray
    noise: torch.Tensor
    chunks: torch.Tensor


def _observations(data: DemoData, rows: np.ndarray, policy: VLAPolicy) -> Observation:
    return Observation.from_frames(data.frames[rows], [data.instructions[i] for i in rows], data.states[rows],
                                   policy.config, device=policy.action_pos.device)


def teacher_chunks(teacher: VLAPolicy, data: DemoData, rows: np.ndarray, teacher_steps: int,
                   generator: torch.Generator, batch_size: int = 64, show_progress: bool = False) -> TeacherChunks:
    """One noise draw per observation row and the chunk the teacher's ODE (teacher_steps Euler steps) makes of it."""
    from tqdm import tqdm

    sampler = teacher.sampler_with(teacher_steps)
    noise, chunks = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc="teacher chunks", unit="batch", disable=not show_progress):
        sample = teacher.predict_action_chunk(_observations(data, rows[start:start + batch_size], teacher),
                                              sampler=sampler, generator=generator)
        noise.append(sample.latents[:, 0].cpu())
        chunks.append(sample.latents[:, -1].cpu())
    return TeacherChunks(np.asarray(rows), torch.cat(noise), torch.cat(chunks))


@torch.no_grad()
def interval_targets(teacher: VLAPolicy, obs: Observation, x: torch.Tensor, start: torch.Tensor,
                     teacher_steps: int, per_step: int) -> torch.Tensor:
    """The student's target velocities (B, H, action_dim) at x, whose rows sit at teacher grid indices `start` (B,):
    the displacement of the teacher's `per_step` Euler steps from there, over the time they span."""
    grid = fm.sigmas(teacher_steps, device=x.device)
    tokens = teacher.encode_observation(obs)
    memory = teacher.observation_memory(tokens)
    y = x
    for j in range(per_step):
        sigma, sigma_next = grid[start + j], grid[start + j + 1]
        y = fm.euler_step(y, teacher.velocity(y, sigma, tokens, memory), sigma[:, None, None],
                          sigma_next[:, None, None])
    return (y - x) / (grid[start + per_step] - grid[start])[:, None, None]


def chunk_error(policy: VLAPolicy, data: DemoData, reference: TeacherChunks, num_steps: int,
                batch_size: int = 64) -> float:
    """RMS difference, over the robot's dimensions in normalised units, between the chunks `policy` samples with
    `num_steps` Euler steps from the reference's noises and its chunks."""
    sampler = policy.sampler_with(num_steps)
    dims = policy.config.robot_action_dim
    total, count = 0.0, 0
    for start in range(0, len(reference.rows), batch_size):
        end = start + batch_size
        sample = policy.predict_action_chunk(_observations(data, reference.rows[start:end], policy), sampler=sampler,
                                             noise=reference.noise[start:end])
        diff = (sample.latents[:, -1].cpu() - reference.chunks[start:end])[..., :dims]
        total += float((diff ** 2).sum())
        count += diff.numel()
    return (total / count) ** 0.5


def _split_rows(data: DemoData, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): every `every`-th episode (by position) is validation, the last one when there
    are fewer than `every`; with a single episode there is none."""
    episodes = np.unique(data.episode_index)
    held = episodes[every - 1::every] if len(episodes) > 1 else episodes[:0]
    if len(held) == 0 and len(episodes) > 1:
        held = episodes[-1:]
    validation = np.isin(data.episode_index, held)
    return np.flatnonzero(~validation), np.flatnonzero(validation)


def distill_policy(teacher_dir: str | Path, data: DemoData, cfg: DistillConfig, out_dir: str | Path,
                   overwrite: bool = False, device: str = "cpu", show_progress: bool = True) -> tuple[Path, dict]:
    """Distill the policy at `teacher_dir` into a cfg.num_steps-step student on the observations of `data`; save it to
    out_dir (checked before any work: never the teacher or a dataset) with distill.json. Returns the path and the
    summary (also in distill.json)."""
    from tqdm import tqdm

    check_output_dir(out_dir, DISTILL_OUTPUT, overwrite=overwrite, inputs=[teacher_dir, *data.sources])
    target = torch_device(device)
    teacher = VLAPolicy.from_pretrained(teacher_dir).to(target).eval()
    teacher_steps = teacher.sampler_with(cfg.teacher_steps).num_steps
    if cfg.num_steps >= teacher_steps or teacher_steps % cfg.num_steps:
        divisors = [k for k in range(1, teacher_steps) if teacher_steps % k == 0]
        raise ConfigError(f"the student's steps must be fewer than the teacher's {teacher_steps} and divide them "
                          f"(one student step spans whole teacher steps): one of {divisors}, got {cfg.num_steps}")
    per_step = teacher_steps // cfg.num_steps
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_rows, validation_rows = _split_rows(data, cfg.validation_every)
    chunks = teacher_chunks(teacher, data, train_rows, teacher_steps, generator, show_progress=show_progress)
    validation = teacher_chunks(teacher, data, validation_rows if len(validation_rows) else train_rows[:256],
                                teacher_steps, generator)

    student = VLAPolicy(dataclasses.replace(teacher.config, num_inference_steps=cfg.num_steps), teacher.norm_stats,
                        load_pretrained=False, embodiment=teacher.embodiment).to(target)
    student.load_state_dict(teacher.state_dict())
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    grid = fm.sigmas(teacher_steps, device=target)
    losses: list[float] = []
    start = time.time()
    student.train()
    with tqdm(total=cfg.steps, desc="policy distill", unit="step", disable=not show_progress) as bar:
        for step in range(cfg.steps):
            batch = torch.randint(0, len(chunks.rows), (cfg.batch_size,), generator=generator)
            first = (torch.randint(0, cfg.num_steps, (cfg.batch_size,), generator=generator) * per_step).to(target)
            noise = fm.seeded_draw(torch.randn, chunks.chunks[batch].shape, generator, target)
            sigma = grid[first][:, None, None]
            x = sigma * noise + (1 - sigma) * chunks.chunks[batch].to(target)
            obs = _observations(data, chunks.rows[batch.numpy()], student)
            velocity = interval_targets(teacher, obs, x, first, teacher_steps, per_step)
            loss = student.velocity_loss(obs, x, grid[first], velocity)
            losses.append(clipped_step(loss, optimizer, schedule, params, cfg.grad_clip, "distillation", step))
            bar.update(1)
            if (step + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}")
    student.eval()
    summary = {
        "teacher": str(teacher_dir), "teacher_steps": teacher_steps, "student_steps": cfg.num_steps,
        "distill_config": dataclasses.asdict(cfg), "training_observations": len(chunks.rows),
        "validation": "held-out episodes" if len(validation_rows) else "training observations (a single episode)",
        "validation_observations": len(validation.rows),
        # RMS distance to the teacher's own chunk for the same noise, normalised action units
        "teacher_at_student_steps_rms": chunk_error(teacher, data, validation, cfg.num_steps),
        "student_rms": chunk_error(student, data, validation, cfg.num_steps),
        "final_loss": float(np.mean(losses[-cfg.log_every:])), "wall_time_s": time.time() - start,
    }
    path = student.save_pretrained(out_dir)
    (Path(path) / "distill.json").write_text(json.dumps(summary, indent=2))
    return Path(path), summary
