"""Can Prophet rank policies before a robot runs them? Imagined vs true success over checkpoints of different quality.

On the outputs of `prophrl demo`: SFT checkpoints at several step budgets (trained here from the demo's
dataset, resumable: an existing checkpoint is reused), the demo's own SFT policy and its RL run's newest
checkpoint are evaluated in the physics sim and inside the demo's Prophet + judge from the same held-out
states (`prophrl eval --in-imagination`). Prints the table and the Pearson correlation across policies:

    python bench/imagined_ranking.py --demo outputs/demo --out outputs/imagined_ranking \\
        --budgets 20 150 400 1000 --episodes 40 --jobs 2

Writes OUT/sft_<steps>/ (the SFT checkpoints) and OUT/report (report.md, summary.json).
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a `prophrl demo` output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 150, 400, 1000], help="SFT steps per extra "
                                                                                             "checkpoint")
    parser.add_argument("--episodes", type=int, default=40, help="held-out states")
    parser.add_argument("--imagined-chunks", type=int, default=8)
    parser.add_argument("--imagined-rollouts", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from prophrl_trainer import report

    demo = args.demo
    args.out.mkdir(parents=True, exist_ok=True)
    policies = []
    for steps in args.budgets:
        checkpoint = args.out / f"sft_{steps}"
        if not (checkpoint / "model.safetensors").is_file():
            subprocess.run([sys.executable, "-m", "prophrl.cli", "policy", "sft", "--dataset", str(demo / "dataset"),
                            "--config", "tiny", "--steps", str(steps), "--out", str(checkpoint), "--overwrite"],
                           check=True)
        policies += ["--policy", f"SFT {steps} steps={checkpoint}"]
    policies += ["--policy", f"demo SFT={demo / 'policy_sft'}"]
    rl = demo / "rl_fa_grpo_flowscale"
    if (rl / "checkpoints").is_dir():
        policies += ["--policy", f"demo FA-GRPO+FlowScale={rl}"]
    code = report.main([*policies, "--episodes", str(args.episodes), "--max-steps", "150",
                        "--replan-steps", "10", "--jobs", str(args.jobs), "--in-imagination",
                        "--world-model", str(demo / "prophet"), "--judge", str(demo / "judge"),
                        "--imagined-chunks", str(args.imagined_chunks),
                        "--imagined-rollouts", str(args.imagined_rollouts), "--out", str(args.out / "report")])
    if code == 0:
        summary = json.loads((args.out / "report" / "summary.json").read_text())
        print(report.imagined_table(summary))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
