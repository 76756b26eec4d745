"""`prophrl demo`: the loop end to end on the embedded defaults (tiny configs, simulated Panda, lift).

Stages (each skipped when its output already exists under --out, so a rerun resumes):
  1. collect scripted demonstrations through the live ROS 2 stack (sim, executor + safety filter,
     expert, recorder, CollectEpisode) into rosbag2 MCAP bags;
  2. bags2dataset: aligned training shards (+ a LeRobot v3 export);
  3. SFT of the tiny VLA policy (flow-matching head) on the demonstrations;
  4. true evaluation in the physics sim on held-out seeds: untrained vs. SFT policy.
The world-model stages (Prophet pretrain/adapt, reward judge, FA-GRPO + FlowScale in imagination)
join this pipeline as they land (see the open issues); the demo prints what it ran.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run_demo(args: argparse.Namespace) -> int:
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.evaluation import EvalSettings, evaluate_policy
    from prophrl_trainer.sft import SFTConfig, load_demonstrations, train_sft
    from prophrl_worldmodel.dataset import bags2dataset

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    config = get_vla_config("tiny")

    def stage(name: str, done: bool, fn) -> None:
        print(f"\n== {name}{' (cached)' if done else ''}", flush=True)
        start = time.time()
        if not done:
            fn()
        timings[name] = time.time() - start

    bags = out / "bags"

    def collect():
        from prophrl.collect_ros import collect_over_ros

        collect_over_ros(argparse.Namespace(robot=args.robot, task=args.task, episodes=args.demos, seed=0,
                                            out=str(bags), teleop="scripted", noise_std=0.0, skill=1.0,
                                            max_steps=300))
    stage(f"1. collect {args.demos} scripted demos over ROS 2", bags.is_dir() and
          len([p for p in bags.iterdir() if p.is_dir()]) >= args.demos, collect)
    dataset = out / "dataset"
    stage("2. bags2dataset (+ LeRobot v3)", (dataset / "index.json").is_file(),
          lambda: bags2dataset([bags], dataset, args.robot, lerobot=True, show_progress=True))
    checkpoint = out / "policy_sft"
    stage(f"3. SFT ({args.sft_steps} steps)", (checkpoint / "model.safetensors").is_file(),
          lambda: train_sft(load_demonstrations(dataset, config.horizon), config,
                            SFTConfig(steps=args.sft_steps), checkpoint, log_dir=out / "tensorboard" / "sft"))

    results = {}

    def evaluate():
        settings = EvalSettings(robot=args.robot, task=args.task, episodes=args.eval_episodes, max_steps=150)
        untrained = VLAPolicy(config)
        results["untrained"] = evaluate_policy(untrained, settings).success_rate
        results["SFT"] = evaluate_policy(checkpoint, settings).success_rate
        (out / "eval.json").write_text(json.dumps(results, indent=2))
    stage(f"4. true evaluation in the sim ({args.eval_episodes} held-out seeds)", (out / "eval.json").is_file(),
          evaluate)
    results = json.loads((out / "eval.json").read_text())

    print(f"\nProphRL demo: {args.robot} / {args.task}, tiny policy, outputs in {out}")
    print(f"{'policy':12s} {'true success %':>15s}")
    for name, rate in results.items():
        print(f"{name:12s} {100 * rate:15.1f}")
    print("\nstage timings: " + ", ".join(f"{k.split(' ')[0]} {v:.0f} s" for k, v in timings.items()))
    print("not yet in the demo: Prophet world model, reward judge, FA-GRPO + FlowScale in imagination")
    return 0
