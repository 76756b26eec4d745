"""Prophet train-step and generation timings on the CPU (random weights and frames).

Times one VAE step, one denoiser training step (training_loss + backward + AdamW), generate (one clip,
K Euler steps) and a closed-loop rollout of N chunks, each the median of --repeats runs.

    python bench/prophet_speed.py [--config tiny] [--batch 8] [--num-steps 10] [--chunks 3] [--threads 1]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import statistics
import time

import torch

from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.modeling_prophet import Prophet


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_prophet_config(args.config)
    model = Prophet(config)
    b, s, f = args.batch, config.image_size, config.frames_per_clip

    def frames(*shape):
        return torch.randint(0, 256, (*shape, s, s, 3), dtype=torch.uint8)

    batch = dict(history_frames=frames(b, config.history_length), current_frame=frames(b),
                 actions=torch.randn(b, config.action_horizon, config.action_dim) * 0.01, future_frames=frames(b, f))
    if config.use_action_frames:
        batch["action_frames"] = frames(b, f)
    vae_opt = torch.optim.AdamW(model.vae_parameters(), lr=1e-4)
    opt = torch.optim.AdamW(model.denoiser_parameters(), lr=1e-4)

    def vae_step():
        loss = model.vae_loss(batch["future_frames"]).loss
        vae_opt.zero_grad()
        loss.backward()
        vae_opt.step()

    def train_step():
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    generator = torch.Generator().manual_seed(0)
    chunks = torch.randn(b, args.chunks, config.action_horizon, config.action_dim) * 0.01
    print(f"config {config.name}: {s} px, {f} frames/clip, chunk {config.action_horizon} x {config.action_dim}, "
          f"history {config.history_length}, action frames {config.use_action_frames}, "
          f"torch threads {torch.get_num_threads()}, batch {b}")
    print(f"VAE step ({b * f} frames):          {median_seconds(vae_step, args.repeats):.3f} s")
    print(f"denoiser train step:              {median_seconds(train_step, args.repeats):.3f} s")
    model.eval()

    def generate():
        model.generate(batch["current_frame"], batch["history_frames"], batch["actions"], args.num_steps, generator)

    def rollout():
        model.rollout(batch["current_frame"][:1], chunks, None, args.num_steps, generator)

    print(f"generate ({args.num_steps} steps):             {median_seconds(generate, args.repeats):.3f} s")
    print(f"rollout ({args.chunks} chunks x {args.num_steps} steps):  "
          f"{median_seconds(rollout, max(1, args.repeats // 2)):.3f} s")

if __name__ == "__main__":
    main()
