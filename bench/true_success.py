"""True success of imagination-only RL: SFT vs FA-GRPO vs FA-GRPO + FlowScale, over several training seeds.

Every RL run starts from the same SFT policy and trains only inside Prophet, scored only by the reward
judge (no physics sim in the loop); then every policy is run in the physics sim on the same held-out
initial states (`prophrl eval`). Typical use, on the outputs of `prophrl demo`:

    python bench/true_success.py --demo outputs/demo --out outputs/true_success --seeds 0 1 2 --updates 20

or with explicit parts (--policy, --world-model, --judge, --data). With --in-sim the RL runs roll out in the
physics sim instead, rewarded by its own success (`prophrl train --sim ROBOT/TASK --sim-reward`; only the
policy is needed): the same recipe with a perfect world model and judge, the ceiling of RL in imagination. With
--replay-in-sim the runs stay inside Prophet, scored by the judge, but start from sim seeds and every imagined
rollout's actions are executed in the sim too (`prophrl train --replay-in-sim`), so the table gives each run's
judge precision and recall on its own rollouts: how far RL could trust its reward.
RL runs are `prophrl train`
subprocesses (--jobs of them at a time, one torch thread each) and resume when rerun. Prints, and writes
to OUT/report (report.md, summary.json, learning curves): the true-success table (mean +- std over
training seeds; with --select-on N also each run's policy selected on N held-out imagined starts), and
here the imagination side of each run (judge reward and judged success at the first and last updates)
with updates/hour, so a gain in imagination that does not transfer is visible.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prophrl_trainer.held_out import EVAL_MAX_STEPS

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # label -> RLConfig overrides
    "FA-GRPO": {"variant": "fa_grpo", "use_flowscale": False},
    "FA-GRPO+FlowScale": {"variant": "fa_grpo", "use_flowscale": True},
    "FA-GRPO+FlowScale+target_kl": {"variant": "fa_grpo", "use_flowscale": True, "target_kl": 0.05},
    "FA-GRPO-element+FlowScale": {"variant": "fa_grpo_element", "use_flowscale": True},
    "FA-GRPO-chunk-mean+FlowScale": {"variant": "fa_grpo_chunk_mean", "use_flowscale": True},
    "Flow-GRPO": {"variant": "flow_grpo", "use_flowscale": False},
}


def _progress(run: Path) -> list[dict]:
    path = run / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.fmean(values) if values else float("nan")


def _window_mean(rows: list[dict], key: str, first: bool, width: int = 3) -> float:
    return _mean(rows[:width] if first else rows[-width:], key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `prophrl demo` output directory (sets the four parts below)")
    parser.add_argument("--policy", type=Path, help="SFT policy checkpoint")
    parser.add_argument("--world-model", type=Path, help="Prophet checkpoint")
    parser.add_argument("--judge", type=Path, help="reward judge checkpoint")
    parser.add_argument("--data", type=Path, nargs="+", help="bags2dataset output(s): the initial states")
    parser.add_argument("--robot", default="panda_sim")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["FA-GRPO", "FA-GRPO+FlowScale"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL training seeds")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rl-config", type=Path, help="base RL config JSON (default: the demo's)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out initial states in the sim")
    parser.add_argument("--replan-steps", type=int, default=2,
                        help="actions executed per chunk in the sim evaluation (same for every policy)")
    parser.add_argument("--max-steps", type=int, default=EVAL_MAX_STEPS)
    parser.add_argument("--over-training", action="store_true",
                        help="also evaluate every retained checkpoint of every run (RLConfig.milestone_every) and "
                             "plot true beside imagined success along training (OUT/report/over_training/)")
    parser.add_argument("--select-on", type=int, default=0, metavar="N",
                        help="checkpoint selection: hold out N recorded starts as imagined validation states "
                             "(RLConfig.validation_states, evaluated every --select-every updates) and evaluate each "
                             "run's selected policy (RUN/best_policy) beside its last")
    parser.add_argument("--select-every", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2,
                        help="RL runs, then sim evaluations, at a time (one torch thread each)")
    parser.add_argument("--in-sim", action="store_true",
                        help="RL in the physics sim (--robot/--task), rewarded by its own success, instead of inside "
                             "the world model with the judge")
    parser.add_argument("--replay-in-sim", action="store_true",
                        help="RL inside the world model with the judge as without it, its starts drawn from sim seeds "
                             "of --robot/--task and every imagined rollout's actions executed in the sim too: the "
                             "table then gives the judge's precision and recall on each run's rollouts")
    args = parser.parse_args()
    from prophrl.demo import DEMO_PARTS, demo_rl_config, fill_parts_from_demo

    if args.in_sim and args.replay_in_sim:
        parser.error("--replay-in-sim replays imagined rollouts in the sim; with --in-sim RL is in the sim already")

    if not args.in_sim:
        fill_parts_from_demo(args, parser)
    elif args.policy is None:
        if args.demo is None:
            parser.error("--in-sim needs --policy or --demo")
        args.policy = args.demo / DEMO_PARTS["policy"]
    if args.in_sim:
        world = ["--sim", f"{args.robot}/{args.task}", "--sim-reward"]
    else:
        starts = (["--replay-in-sim", f"{args.robot}/{args.task}"] if args.replay_in_sim else
                  ["--data", *map(str, args.data)])
        world = ["--world-model", str(args.world_model), "--judge", str(args.judge), *starts]

    if args.rl_config:
        base = json.loads(args.rl_config.read_text())
    else:   # the demo's recipe, its rollouts as long as the demonstrations' median
        from prophrl_policy.configuration_vla import VLAConfig
        from prophrl_policy.modeling_vla import CONFIG_NAME

        demonstrations = args.data or ([args.demo / DEMO_PARTS["data"]] if args.demo else None)
        if demonstrations is None:
            parser.error("--in-sim with --policy needs --rl-config, or --data / --demo: the demonstrations whose "
                         "median length sets how many chunks a rollout lasts")
        base = demo_rl_config(demonstrations, VLAConfig.from_json_file(args.policy / CONFIG_NAME).horizon)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.select_on:
        base.update(validation_states=args.select_on, eval_every=args.select_every)
    runs: dict[str, list[Path]] = {label: [] for label in args.variants}
    commands = []
    for label in args.variants:
        for seed in args.seeds:
            run = args.out / f"{label.replace('+', '_').lower()}_seed{seed}"
            runs[label].append(run)
            if len(_progress(run)) >= args.updates:
                continue
            config = {**base, **VARIANTS[label], "seed": seed, "updates": args.updates}
            config_path = args.out / f"{run.name}.rl_config.json"
            config_path.write_text(json.dumps(config, indent=1))
            commands.append((run, [sys.executable, "-m", "prophrl_trainer.train_cli", "--policy", str(args.policy),
                                   *world, "--out", str(run), "--updates", str(args.updates),
                                   "--config", str(config_path), "--threads", "1", "--resume", "--no-progress"]))

    start = time.time()
    running: list[tuple[Path, subprocess.Popen, object]] = []
    failed = []
    while commands or running:
        while commands and len(running) < args.jobs:
            run, argv = commands.pop(0)
            log = open(args.out / f"{run.name}.log", "w")
            print(f"[{time.time() - start:6.0f} s] start {run.name}", flush=True)
            running.append((run, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for item in list(running):
            run, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"[{time.time() - start:6.0f} s] {run.name} exited {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append(run.name)
    if failed:
        print(f"RL runs failed: {failed}; see their .log files in {args.out}")
        return 1
    rl_wall = time.time() - start

    from prophrl_common.tables import print_table
    from prophrl_trainer.report import gain_text, main as report_main
    from prophrl_trainer.success_statistics import paired_gain
    from prophrl_trainer.training_curves import reward_truth_blocks

    report_args = ["--policy", f"SFT={args.policy}"]
    for label, paths in runs.items():
        report_args += ["--policy", f"{label}={','.join(map(str, paths))}"]
        if args.select_on:
            selected = ",".join(str(path / "best_policy") for path in paths)
            report_args += ["--policy", f"{label} selected={selected}"]
    if args.over_training:
        for label, paths in runs.items():
            report_args += ["--over-training", f"{label}={','.join(map(str, paths))}"]
    code = report_main([*report_args, "--robot", args.robot, "--task", args.task, "--episodes", str(args.episodes),
                        "--replan-steps", str(args.replan_steps), "--max-steps", str(args.max_steps),
                        "--jobs", str(args.jobs),
                        *(["--world-model", str(args.world_model)] if args.world_model else []),
                        "--out", str(args.out / "report")])
    if code:
        return code
    summary = json.loads((args.out / "report" / "summary.json").read_text())
    sft_mean = summary["policies"]["SFT"]["tasks"][args.task]["mean"]

    rows = []
    for label, paths in runs.items():
        true = summary["policies"][label]["tasks"][args.task]
        for path, seed_entry in zip(paths, true["per_training_seed"]):
            progress = _progress(path)
            seconds = sum(r.get("time/update_total_s", 0.0) for r in progress)
            truth = reward_truth_blocks(progress, block=max(len(progress), 1))
            judge_on_rollouts = ([truth[0].precision, truth[0].recall, truth[0].advantage_on_true_success] if truth
                                 else ["-"] * 3)
            rows.append([label, path.name, len(progress),
                         _window_mean(progress, "rollout/reward_mean", True),
                         _window_mean(progress, "rollout/reward_mean", False),
                         _window_mean(progress, "rollout/success_rate", True),
                         _window_mean(progress, "rollout/success_rate", False),
                         _mean(progress, "train/policy_kl"), _mean(progress, "train/clip_fraction"),
                         _mean(progress, "train/stopped_early"), *judge_on_rollouts,
                         100 * seed_entry["success_rate"], 3600 * len(progress) / max(seconds, 1e-9)])
    side = "sim side (the sim's success as reward" if args.in_sim else "imagination side (judge reward / judged success"
    print_table(f"{side}, mean of the first and last 3 updates), trust region "
                "(per update: policy KL to the rollout policy in nats per chunk and clip fraction, mean over its "
                "minibatches; the fraction of updates target_kl stopped), the reward against the sim's own success "
                "on the run's rollouts (with --in-sim or --replay-in-sim: precision, recall and the share of the "
                "positive advantage on true successes) and true success of each run",
                ["policy", "run", "updates", "reward first", "reward last", "judged first", "judged last",
                 "policy KL", "clip frac", "stopped", "precision", "recall", "adv+ on true", "true success %",
                 "updates/h"], rows)
    table = [["SFT", 100 * sft_mean, 0.0, "-", "-"]]
    evaluated = [name for label in runs for name in ([label, f"{label} selected"] if args.select_on else [label])]
    for label in evaluated:
        entry = summary["policies"][label]["tasks"][args.task]
        table.append([label, 100 * entry["mean"], 100 * entry["std"], f"{100 * (entry['mean'] - sft_mean):+.1f}",
                      gain_text(entry) or "-"])
    print_table(f"true success in the sim, {args.robot}/{args.task}, {args.episodes} held-out states, "
                f"{len(args.seeds)} RL seeds, {args.updates} updates, {args.replan_steps} action(s) per chunk",
                ["policy", "success %", "std over seeds", "gain vs SFT", "paired gain (95 % CI)"], table,
                float_format=".1f")
    if len(args.variants) > 1:
        first = args.variants[0]
        base_states = summary["policies"][first]["tasks"][args.task]["per_state"]
        print_table(f"each variant against {first} (paired by state, 95 % interval)", ["policy", f"gain vs {first}"],
                    [[label, paired_gain(base_states, summary["policies"][label]["tasks"][args.task]["per_state"])
                      .percent(signed=True)] for label in args.variants[1:]])
    print(f"\nRL wall time {rl_wall / 60:.1f} min ({args.jobs} at a time); report in {args.out / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
