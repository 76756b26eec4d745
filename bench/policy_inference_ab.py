"""In-process policy inference, an older commit's code against this checkout's, in one run on one machine.

Each side is a subprocess running its own code (the old one from a git worktree) that times
VLAPolicy.predict_action_chunk (ODE, the config's K steps, one 128x128 frame, one torch thread) `--chunks` times;
the sides alternate for `--rounds` rounds, so that a neighbour's load falls on both. Prints each side's p50 /
p95 over all its rounds and the ratio of the p50s.

    python bench/policy_inference_ab.py OLD_COMMIT [--config tiny] [--rounds 6] [--chunks 40] [--new-num-steps K]
                                         [--new-checkpoint DIR]
e.g. issue 15's starting code:
    python bench/policy_inference_ab.py 67f5945
--new-num-steps K times this checkout with K denoising steps (the policy node's `num_steps`) instead of the
config's own, against the old code with its own; --new-checkpoint DIR times that checkpoint at its own sampler (a
`prophrl policy distill` output: its few steps) against the old code's fresh policy of --config.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Runs under either side's code: only the API both have (Observation, predict_action_chunk, get_vla_config).
TIMING = r"""
import prophrl_common.threads  # noqa: F401 - the project's threading setup, before torch
import json, sys, time
import torch
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import Observation, VLAPolicy
torch.set_num_threads(1)
torch.manual_seed(0)
# argv[4]: a checkpoint to time at its own sampler (only the new side is given one)
policy = (VLAPolicy.from_pretrained(sys.argv[4]) if sys.argv[4] else VLAPolicy(get_vla_config(sys.argv[1]))).eval()
sampler = policy.sampler_with(int(sys.argv[3])) if int(sys.argv[3]) else None  # only the new side sets steps
obs = Observation(torch.rand(1, 3, 128, 128), ["lift the red cube"], torch.randn(1, 8))
generator = torch.Generator().manual_seed(0)
times = []
with torch.inference_mode():
    for i in range(int(sys.argv[2]) + 5):
        start = time.perf_counter()
        policy.predict_action_chunk(obs, sampler=sampler, generator=generator)
        if i >= 5:
            times.append((time.perf_counter() - start) * 1e3)
print(json.dumps(times))
"""


def _source_path(root: Path) -> str:
    return os.pathsep.join(str(p) for p in sorted((root / "src").glob("prophrl*/")) if p.name != "prophrl_msgs")


def _time(root: Path, config: str, chunks: int, num_steps: int, checkpoint: str = "") -> list[float]:
    env = {**os.environ, "PYTHONPATH": _source_path(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", TIMING, config, str(chunks), str(num_steps), checkpoint], env=env,
                         check=True, capture_output=True, text=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the older commit (any git revision)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--chunks", type=int, default=40, help="timed chunks per side and round")
    parser.add_argument("--new-num-steps", type=int, default=0,
                        help="denoising steps of this checkout's side (0: the config's own)")
    parser.add_argument("--new-checkpoint", default="",
                        help="this checkout's side times this policy checkpoint at its own sampler (e.g. a "
                             "`prophrl policy distill` output) instead of a fresh policy of --config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="policy_inference_ab.") as work:
        old = Path(work) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), args.old], check=True)
        try:
            times = {"old": [], "new": []}
            for round_ in range(1, args.rounds + 1):
                for side, root, num_steps, checkpoint in (("old", old, 0, ""),
                                                          ("new", REPO, args.new_num_steps, args.new_checkpoint)):
                    times[side] += _time(root, args.config, args.chunks, num_steps, checkpoint)
                print(f"round {round_}/{args.rounds}: old p50 {np.percentile(times['old'], 50):.2f} ms, "
                      f"new p50 {np.percentile(times['new'], 50):.2f} ms", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True)
    steps = f" with {args.new_num_steps} denoising steps" if args.new_num_steps else ""
    steps += f" on {args.new_checkpoint}" if args.new_checkpoint else ""
    print(f"\nPolicy inference in process ({args.config}, ODE, 1 thread): {args.old} vs this checkout{steps}, "
          f"{args.rounds} alternating rounds of {args.chunks} chunks")
    print(f"{'code':8s} {'p50 ms':>8s} {'p95 ms':>8s} {'n':>5s}")
    for side, values in times.items():
        print(f"{side:8s} {np.percentile(values, 50):8.2f} {np.percentile(values, 95):8.2f} {len(values):5d}")
    print(f"p50 ratio old / new: {np.percentile(times['old'], 50) / np.percentile(times['new'], 50):.2f}x")


if __name__ == "__main__":
    main()
