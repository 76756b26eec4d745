"""SFT success vs. demonstration budget: collect scripted demos, bags2dataset, SFT, true sim success.

    python bench/sft_budget.py --robot panda_sim --task lift --budgets 5 10 20 --steps 2000 --eval-episodes 20

Everything is written under --work (bags, datasets, checkpoints, TensorBoard logs) and reused on a
second run: existing bags/checkpoints are not regenerated. Prints a table: budget, SFT final loss,
success % on held-out seeds (mean +- std over --policy-seeds sampling seeds).
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import time
from pathlib import Path

from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_trainer.evaluation import EvalSettings, evaluate_policy, mean_std
from prophrl_trainer.held_out import EVAL_MAX_STEPS
from prophrl_trainer.sft import SFTConfig, load_demonstrations, train_sft
from prophrl_data.conversion import bags2dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robot", default="panda_sim")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--policy-seeds", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=EVAL_MAX_STEPS)
    parser.add_argument("--work", default="outputs/sft_budget")
    args = parser.parse_args()

    work = Path(args.work) / f"{args.robot}_{args.task}"
    bags = work / "bags"
    have = len([p for p in bags.iterdir() if p.is_dir()]) if bags.is_dir() else 0
    if have < max(args.budgets):
        collect_direct(CollectSettings(robot=args.robot, task=args.task, episodes=max(args.budgets) - have,
                                       first_seed=have, max_steps=args.max_steps + 100), bags)
    all_bags = sorted(p for p in bags.iterdir() if p.is_dir())
    rows = []
    for budget in args.budgets:
        dataset = work / f"dataset_{budget}"
        if not dataset.exists():
            bags2dataset(all_bags[:budget], dataset, args.robot, show_progress=True)
        checkpoint = work / f"sft_{args.config}_{budget}demos_{args.steps}steps"
        config = get_vla_config(args.config)
        if not (checkpoint / "model.safetensors").exists():
            data = load_demonstrations(dataset, config.horizon)
            start = time.time()
            _, losses = train_sft(data, config, SFTConfig(steps=args.steps, batch_size=args.batch_size), checkpoint,
                                  log_dir=checkpoint.parent / "tensorboard" / checkpoint.name)
            (checkpoint / "bench.json").write_text(json.dumps({"train_seconds": time.time() - start}))
        rates = []
        for policy_seed in range(args.policy_seeds):
            settings = EvalSettings(robot=args.robot, task=args.task, episodes=args.eval_episodes,
                                    max_steps=args.max_steps, replan_steps=2)
            rates.append(evaluate_policy(checkpoint, settings, policy_seed=policy_seed).success_rate)
        mean, std = mean_std(rates)
        loss = json.loads((checkpoint / "sft.json").read_text())["final_loss"]
        rows.append((budget, loss, mean, std))
        print(f"budget {budget}: success {100 * mean:.1f} +- {100 * std:.1f} %", flush=True)

    print(f"\nSFT ({args.config}, {args.steps} steps) on {args.robot}/{args.task}, "
          f"{args.eval_episodes} held-out episodes x {args.policy_seeds} sampling seeds")
    print(f"{'demos':>6s} {'final loss':>11s} {'success %':>14s}")
    for budget, loss, mean, std in rows:
        print(f"{budget:6d} {loss:11.4f} {100 * mean:7.1f} +- {100 * std:4.1f}")


if __name__ == "__main__":
    main()
