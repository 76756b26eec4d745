"""How many denoising steps a policy needs: latency and action change per K, on recorded observations.

The policy node's `num_steps` (and `prophrl policy eval --num-steps`) sample a chunk with K Euler steps instead
of the checkpoint's own. Inference time is about linear in K, so fewer steps is the large speed lever; what it
costs is the change in the actions. For each K this prints, on `--observations` recorded observations of a
dataset (frames, proprio state, instruction) and `--seeds` initial noises each:

- p50 ms: in-process ODE chunk, batch 1, one torch thread (the policy node's case);
- change: mean over observations and noises of the RMS difference, in the policy's normalised action space
  (robot dims), between the chunk sampled with K steps and with `--reference` steps from the same noise;
- / spread: that change over the policy's own spread at the reference: the RMS difference between chunks
  of the same observation from two different noises. Well below 1, the K-step policy acts like the reference
  one up to a small part of its own sampling randomness;

then, on a machine whose inference is compute-bound, confirm the choice in the sim, paired by state:

    prophrl eval --policy K10=CKPT --policy K6=CKPT ... (one label per --num-steps run)

    python bench/denoising_steps.py --checkpoint checkpoints/sft --data data/held_out [--steps 3 4 5 6 8 10]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from prophrl_common.config_io import ConfigError
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer.sft import load_demonstrations


def _chunks(policy: VLAPolicy, obs: Observation, num_steps: int, noise_seed: int) -> torch.Tensor:
    """(B, H, robot dims) ODE chunks in the normalised action space, every row from noise seed `noise_seed`."""
    sample = policy.predict_action_chunk(obs, sampler=policy.sampler_with(num_steps),
                                         generator=torch.Generator().manual_seed(noise_seed))
    return sample.latents[:, -1, :, : policy.config.robot_action_dim]


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().mean(dim=(1, 2)).sqrt().mean().item()


def _latency_ms(policy: VLAPolicy, obs: Observation, num_steps: int, repeats: int) -> float:
    sampler = policy.sampler_with(num_steps)
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        policy.predict_action_chunk(obs, sampler=sampler, generator=generator)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="policy checkpoint directory")
    parser.add_argument("--data", type=Path, required=True, help="a bags2dataset output (held-out episodes)")
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--reference", type=int, default=20, help="denoising steps of the reference chunks")
    parser.add_argument("--observations", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=4, help="initial noises per observation (>= 2)")
    parser.add_argument("--repeats", type=int, default=30, help="timed chunks per K")
    args = parser.parse_args()
    if args.seeds < 2 or args.observations < 1 or min(args.steps + [args.reference, args.repeats]) < 1:
        parser.error("--seeds must be >= 2; --observations, --steps, --reference and --repeats >= 1")
    torch.set_num_threads(1)
    try:
        policy = VLAPolicy.from_pretrained(args.checkpoint).eval()
        data = load_demonstrations(args.data, policy.config.horizon)
    except ConfigError as exc:
        print(f"denoising_steps: {exc}", file=sys.stderr)
        return 2
    picks = np.random.default_rng(0).choice(len(data), size=min(args.observations, len(data)), replace=False)
    obs = Observation.from_frames(data.frames[picks], [data.instructions[i] for i in picks], data.states[picks],
                                  policy.config)
    with torch.inference_mode():
        reference = [_chunks(policy, obs, args.reference, seed) for seed in range(args.seeds)]
        spread = float(np.mean([_rms(reference[s], reference[s + 1]) for s in range(args.seeds - 1)]))
        single = Observation(obs.images[:1], obs.instructions[:1], obs.states[:1])
        rows = []
        for k in sorted(set(args.steps)):
            change = float(np.mean([_rms(_chunks(policy, obs, k, seed), reference[seed]) for seed in range(args.seeds)]))
            rows.append((k, _latency_ms(policy, single, k, args.repeats), change))
    own = policy.config.sampler.num_steps
    own_ms = next((ms for k, ms, _ in rows if k == own), None)
    print(f"\n{args.checkpoint} (saved with {own} steps): {len(picks)} observations of {args.data} x {args.seeds} "
          f"noises; reference {args.reference} steps; the policy's own spread between noises {spread:.4f} RMS")
    print(f"{'K':>4s} {'p50 ms':>8s} {'speed-up':>9s} {'change':>8s} {'/ spread':>9s}")
    for k, ms, change in rows:
        speed_up = f"{own_ms / ms:8.2f}x" if own_ms else f"{'-':>9s}"
        print(f"{k:4d} {ms:8.2f} {speed_up} {change:8.4f} {change / spread:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
