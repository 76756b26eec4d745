"""How much of the group-relative advantage in imagination comes from the policy's own actions?

FA-GRPO learns from reward differences between the G rollouts of one initial state. In imagination those
differences have two sources: the policy's sampling noise (what the advantage is meant to credit) and the
world model's sampling noise, passed through the closed loop and the judge (noise the policy cannot
control). This bench imagines the same initial states with the same policy sampling seeds twice:

- "independent": every rollout draws its own world-model noise, as `prophrl train` does by default;
- "shared": the rollouts of a group draw common world-model noise (RLConfig.shared_world_model_noise),
  so they differ only through their actions;

and prints the mean within-group reward std of both, the share of the within-group reward variance that
remains with shared noise (shared / independent: near 0 means the advantages mostly credit world-model
noise), and the spread of the group means across initial states. Typical use, on `prophrl demo` outputs:

    python bench/reward_signal.py --demo outputs/demo --states 16
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `prophrl demo` output directory (sets the four parts below)")
    parser.add_argument("--policy", type=Path)
    parser.add_argument("--world-model", type=Path)
    parser.add_argument("--judge", type=Path)
    parser.add_argument("--data", type=Path, nargs="+")
    parser.add_argument("--rl-config", type=Path, help="RL config JSON (default: the demo's)")
    parser.add_argument("--states", type=int, default=16, help="initial states (fixed, the sampler's first)")
    parser.add_argument("--batch-states", type=int, default=2, help="initial states imagined per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    from prophrl.demo import demo_rl_config, fill_parts_from_demo

    fill_parts_from_demo(args, parser)
    torch.set_num_threads(args.threads)

    from prophrl_common.tables import print_table
    from prophrl_policy.configuration_vla import VLAConfig
    from prophrl_policy.modeling_vla import CONFIG_NAME
    from prophrl_trainer.imagined_rollouts import derived_seed
    from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "rl.json"
        base = (json.loads(args.rl_config.read_text()) if args.rl_config else
                demo_rl_config(args.data, VLAConfig.from_json_file(args.policy / CONFIG_NAME).horizon))
        config_path.write_text(json.dumps({**base, "seed": args.seed}))
        train_args = build_parser().parse_args(
            ["--policy", str(args.policy), "--world-model", str(args.world_model), "--judge", str(args.judge),
             "--data", *map(str, args.data), "--out", str(Path(tmp) / "run"), "--config", str(config_path),
             "--no-progress"])
        trainer, _ = build_trainer(TrainSettings.from_args(train_args), show_progress=False)
        cfg = trainer.config
        starts = trainer.sampler.fixed(args.states)
        rewards = {"independent": [], "shared": []}
        start_time = time.perf_counter()
        for first in range(0, len(starts), args.batch_states):
            batch = starts[first:first + args.batch_states]
            seeds = [derived_seed(args.seed, 4242, first + i) for i in range(len(batch))]
            for noise in rewards:
                trainer.backend.shared_noise = noise == "shared"
                generator = torch.Generator().manual_seed(derived_seed(args.seed, 99, first))
                imagined = trainer.imagine(batch, seeds, cfg.group_size, "sde", generator, stop_when_done=False)
                rewards[noise].append(imagined.rewards)
            print(f"[{time.perf_counter() - start_time:5.0f} s] {first + len(batch)}/{len(starts)} states",
                  flush=True)
    figures = {}
    rows = []
    for noise, parts in rewards.items():
        r = np.concatenate(parts)                        # (states, G)
        within = r.std(axis=1)
        figures[noise] = {"reward_mean": float(r.mean()), "within_group_std": float(within.mean()),
                         "within_group_var": float((within ** 2).mean()),
                         "between_state_std": float(r.mean(axis=1).std()),
                         "groups_without_signal": float((within < 1e-8).mean())}
        rows.append([noise, float(r.mean()), float(within.mean()), float(r.mean(axis=1).std())])
    share = figures["shared"]["within_group_var"] / max(figures["independent"]["within_group_var"], 1e-12)
    figures["share_left_with_shared_noise"] = share
    figures.update(states=len(starts), group_size=cfg.group_size, chunks_per_rollout=cfg.chunks_per_rollout,
                   noise_level=cfg.noise_level)
    print_table(f"imagined reward (judge), {len(starts)} initial states x G={cfg.group_size}, "
                f"{cfg.chunks_per_rollout} chunks, SDE policy with the same sampling seeds",
                ["world-model noise", "reward mean", "within-group std", "std of group means"], rows,
                float_format=".3f")
    print(f"\nwithin-group reward variance left when the group shares world-model noise (shared / independent): "
          f"{share:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
