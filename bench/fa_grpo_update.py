"""FA-GRPO + FlowScale in imagination: updates/hour on a realistic tiny setup, and the policy update's FLOP/s
as a fraction of this machine's measured matmul peak.

Setup (random-initialised, real architectures, CPU): Prophet `tiny` (64 px, 4 frames x 5 actions per clip,
action_horizon 20, 4 transformer layers, 10 Euler steps per clip), policy `tiny` (small CNN + hashed
bag-of-words, 3-layer flow-matching head, horizon 20, K = 10 SDE steps), reward judge `tiny` (video
classifier). One update = states x G rollouts x chunks imagined closed loop, judged after every chunk
(early termination), then `ppo_epochs` FA-GRPO epochs.

FLOPs of one policy update are counted with torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions and attention; element-wise ops are not counted, so the fraction is a lower bound) and
divided by the update's wall time. The peak is the best of repeated float32 torch.matmul of n x n
matrices, on 1 thread and on all threads.

    python bench/fa_grpo_update.py [--updates 3] [--threads 1] [--group-size 8] [--states 2] [--chunks 2]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def matmul_peak(threads: int, n: int, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def build_setup(root: Path, image_size: int, judge: bool):
    import torch

    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.rl_smoke import smoke_norm_stats, write_smoke_dataset
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_judge import RewardJudge
    from prophrl_worldmodel.modeling_prophet import Prophet

    torch.manual_seed(0)
    prophet = Prophet(get_prophet_config("tiny", image_size=image_size)).eval()
    prophet.save_pretrained(root / "prophet")
    policy_config = get_vla_config("tiny", horizon=prophet.config.action_horizon)
    VLAPolicy(policy_config, smoke_norm_stats()).save_pretrained(root / "policy")
    write_smoke_dataset(root / "data", episodes=4, size=image_size)
    if judge:
        RewardJudge(get_judge_config("tiny", image_size=image_size)).save_pretrained(root / "judge")
    return prophet.config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3, help="timed updates (after one warm-up update)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the RL run")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--states", type=int, default=2, help="initial states per update")
    parser.add_argument("--chunks", type=int, default=2, help="chunks per rollout")
    parser.add_argument("--denoising-steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--out", default="", help="keep the setup and run here (default: a temp dir)")
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from prophrl_trainer.fa_grpo import group_advantages, policy_update
    from prophrl_common.tables import print_table
    from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer

    all_threads = os.cpu_count() or 1
    peak_1 = matmul_peak(1, args.matmul_n)
    peak_all = matmul_peak(all_threads, args.matmul_n)
    torch.set_num_threads(args.threads)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fa_grpo_bench-"))
    root.mkdir(parents=True, exist_ok=True)
    prophet_config = build_setup(root, args.image_size, judge=True)
    config = root / "rl.json"
    config.write_text(
        '{"group_size": %d, "states_per_update": %d, "chunks_per_rollout": %d, "denoising_steps": %d, '
        '"ppo_epochs": 2, "minibatch_size": 32, "eval_every": 0, "checkpoint_every": 1000, "keep_checkpoints": 1}'
        % (args.group_size, args.states, args.chunks, args.denoising_steps))
    total = args.updates + 1
    trainer, _ = build_trainer(TrainSettings.from_args(build_parser().parse_args([
        "--policy", str(root / "policy"), "--world-model", str(root / "prophet"), "--judge", str(root / "judge"),
        "--data", str(root / "data"), "--out", str(root / "run"), "--updates", str(total), "--config", str(config),
        "--no-progress"])), show_progress=False)
    history = trainer.run(total)[1:]          # the first update warms up allocators and caches
    per_update = [m["time/update_total_s"] for m in history]
    mean = lambda key: statistics.fmean(m[key] for m in history)  # noqa: E731

    # FLOPs and wall time of one policy update on a freshly imagined batch
    cfg = trainer.config
    starts = trainer.sampler.sample(cfg.states_per_update)
    imagined = trainer.imagine(starts, list(range(len(starts))), cfg.group_size, "sde", trainer.generator)
    advantages = group_advantages(torch.from_numpy(imagined.rewards).double()).flatten()
    batch = trainer.rollout_batch(imagined, advantages, drop_masked=True)
    def update():
        return policy_update(trainer.policy, trainer.optimizer, batch, cfg.algorithm, cfg.chunk_sampler,
                             epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size,
                             generator=trainer.order_generator)

    with FlopCounterMode(display=False) as counter:
        update()
    flops = counter.get_total_flops()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    update_s = min(times)
    flop_rate = flops / update_s
    peak_used = peak_1 if args.threads == 1 else peak_all

    rollouts = cfg.states_per_update * cfg.group_size
    print_table(
        f"FA-GRPO + FlowScale update, CPU ({args.threads} torch thread(s) of {all_threads}); Prophet tiny "
        f"{args.image_size}px, action_horizon {prophet_config.action_horizon}; policy tiny; judge tiny; "
        f"{cfg.states_per_update} states x G={cfg.group_size} x {cfg.chunks_per_rollout} chunks, "
        f"K={cfg.denoising_steps}",
        ["measure", "value"],
        [["s / update (mean of %d)" % len(per_update), f"{statistics.fmean(per_update):.2f}"],
         ["updates / hour", f"{3600 / statistics.fmean(per_update):.0f}"],
         ["  world model s / update", f"{mean('time/world_model_s'):.2f}"],
         ["  policy sampling s / update", f"{mean('time/policy_s'):.2f}"],
         ["  judge s / update", f"{mean('time/judge_s'):.2f}"],
         ["  policy update s / update", f"{mean('time/update_s'):.2f}"],
         ["rollouts / hour", f"{3600 * rollouts / statistics.fmean(per_update):.0f}"],
         ["chunks in the update batch", f"{batch.size}"],
         ["policy update GFLOP (counted)", f"{flops / 1e9:.2f}"],
         ["policy update wall s (best of 3)", f"{update_s:.3f}"],
         ["policy update GFLOP/s", f"{flop_rate / 1e9:.2f}"],
         ["matmul peak GFLOP/s, 1 thread", f"{peak_1 / 1e9:.1f}"],
         [f"matmul peak GFLOP/s, {all_threads} threads", f"{peak_all / 1e9:.1f}"],
         ["update FLOP/s / matmul peak (same threads)", f"{100 * flop_rate / peak_used:.1f} %"]])


if __name__ == "__main__":
    main()
