"""Can Prophet rank policies before a robot runs them? Imagined vs true success over checkpoints of different quality.

On the outputs of `prophrl demo`: SFT checkpoints at several step budgets (trained here from the demo's
dataset, resumable: an existing checkpoint is reused), the demo's own SFT policy and its RL run's newest
checkpoint are evaluated in the physics sim and inside the demo's Prophet + judge from the same held-out
states (`prophrl eval --in-imagination`). Prints the table and the Pearson correlation across policies:

    python bench/imagined_ranking.py --demo outputs/demo --out outputs/imagined_ranking \\
        --budgets 20 150 400 1000 --episodes 40 --jobs 2

Writes OUT/sft_<steps>/ (the SFT checkpoints) and OUT/report (report.md, summary.json).

Another world model and judge on the same policies and states, without running the sim again: --from-report
takes existing `prophrl eval` reports' true success (per policy and state; several reports on the same states
are merged) and recomputes only the imagined success, writing OUT/report/summary.json:

    python bench/imagined_ranking.py --from-report outputs/imagined_ranking/report --world-model OTHER_PROPHET \
        --judge OTHER_JUDGE --out outputs/imagined_ranking_other
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import subprocess
import sys
from pathlib import Path

from prophrl_trainer.held_out import EVAL_MAX_STEPS
from prophrl_worldmodel.judge_episodes import JUDGING


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `prophrl demo` output directory")
    parser.add_argument("--from-report", type=Path, nargs="+", help="reuse these `prophrl eval` reports' policies, "
                        "states and true success (several: evaluated on the same states, merged); evaluate only in "
                        "imagination")
    parser.add_argument("--world-model", type=Path, help="Prophet checkpoint (default: the demo's)")
    parser.add_argument("--judge", type=Path, nargs="+", help="judge checkpoint(s) (default: the demo's)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 150, 400, 1000], help="SFT steps per extra "
                                                                                             "checkpoint")
    parser.add_argument("--episodes", type=int, default=40, help="held-out states")
    parser.add_argument("--imagined-chunks", type=int, default=8)
    parser.add_argument("--imagined-rollouts", type=int, default=2)
    parser.add_argument("--imagined-judging", choices=JUDGING, default=JUDGING[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from prophrl_trainer import report

    if args.from_report is not None:
        return reimagine(args)
    if args.demo is None:
        parser.error("--demo or --from-report is required")
    demo = args.demo
    world_model = args.world_model or demo / "prophet"
    judges = args.judge or [demo / "judge"]
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
    code = report.main([*policies, "--episodes", str(args.episodes), "--max-steps", str(EVAL_MAX_STEPS),
                        "--replan-steps", "10", "--jobs", str(args.jobs), "--in-imagination",
                        "--world-model", str(world_model), "--judge", *map(str, judges),
                        "--imagined-chunks", str(args.imagined_chunks),
                        "--imagined-rollouts", str(args.imagined_rollouts),
                        "--imagined-judging", args.imagined_judging, "--out", str(args.out / "report")])
    if code == 0:
        summary = json.loads((args.out / "report" / "summary.json").read_text())
        print(report.imagined_table(summary))
    return code


SAME_STATES = ("robot", "episodes", "first_seed", "max_steps", "replan_steps", "num_steps")


def merged_reports(paths: list[Path]) -> dict:
    """One summary holding every policy of these `prophrl eval` reports, which must share their states and
    settings (SAME_STATES); a label in several reports must name the same checkpoints."""
    from prophrl_common.config_io import ConfigError

    merged: dict | None = None
    for path in paths:
        summary_path = path / "summary.json"
        if not summary_path.is_file():
            raise ConfigError(f"--from-report {path}: no summary.json (not a `prophrl eval` report)")
        summary = json.loads(summary_path.read_text())
        summary.pop("imagined_vs_true", None)
        if merged is None:
            merged = summary
            continue
        differ = [k for k in SAME_STATES if summary.get(k) != merged.get(k)]
        if differ:
            raise ConfigError(f"--from-report {path}: its {', '.join(differ)} differ from {paths[0]}'s; the "
                              "reports must be evaluated on the same states")
        for label, entry in summary["policies"].items():
            known = merged["policies"].get(label)
            if known is not None and known["checkpoints"] != entry["checkpoints"]:
                raise ConfigError(f"--from-report {path}: policy {label!r} names other checkpoints than in an "
                                  "earlier report")
            merged["policies"].setdefault(label, entry)
    return merged


def reimagine(args: argparse.Namespace) -> int:
    """Imagined success of the reports' policies on their states with --world-model / --judge; true success reused."""
    from prophrl_common.config_io import ConfigError
    from prophrl_trainer import report
    from prophrl_trainer.evaluation import EvalSettings
    from prophrl_trainer.imagined_evaluation import ImaginedEvalSettings

    if args.world_model is None or not args.judge:
        raise ConfigError("--from-report needs --world-model and --judge")
    summary = merged_reports(args.from_report)
    policies = {label: [report.PolicySource(label, Path(c)) for c in entry["checkpoints"]]
                for label, entry in summary["policies"].items()}
    tasks = sorted({task for entry in summary["policies"].values() for task in entry["tasks"]})
    settings = EvalSettings(robot=summary["robot"], episodes=summary["episodes"], first_seed=summary["first_seed"],
                            max_steps=summary["max_steps"], replan_steps=summary["replan_steps"])
    imagined = ImaginedEvalSettings(str(args.world_model), tuple(map(str, args.judge)), args.imagined_chunks,
                                    args.imagined_rollouts, judging=args.imagined_judging).validate()
    report.add_imagined_success(summary, policies, tasks, settings, imagined)
    out = args.out / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report.imagined_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
