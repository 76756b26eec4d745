"""`prophrl train`: FA-GRPO + FlowScale RL of an SFT policy inside Prophet (also one rank under torchrun:
`torchrun --nproc_per_node N -m prophrl_trainer.train_cli ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from prophrl_common.config_io import ConfigError
from prophrl_common.devices import torch_device
from prophrl_common.outputs import check_run_dir
from prophrl_common.tables import print_table
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.distributed import DistContext
from prophrl_trainer.imagined_rollouts import eyes_mismatch, judge_steps_mismatch
from prophrl_trainer.initial_states import InitialStateSampler
from prophrl_trainer.rl_config import RL_RUN_OUTPUT, RLConfig
from prophrl_trainer.rl_trainer import Trainer
from prophrl_trainer.rollout_length import short_rollouts
from prophrl_trainer.rollouts import (EndEffectorDisplacementReward, InProcessImagination, JudgeScorer,
                                      RolloutBackend, RolloutScorer)
from prophrl_trainer.sim_backend import SimRollouts, SimSuccessScorer, parse_sim, sim_starts
from prophrl_trainer.sim_replay import REPLAY_IMAGE_SIZE, ReplayedInSim
from prophrl_trainer.training_curves import REWARD_TRUTH_HEADER, reward_truth_blocks, reward_truth_rows

# `prophrl train --sim`: the sim seeds RL's starts are drawn from (the demo's imagination draws from its ~90
# recorded episodes' starts).
SIM_STATES = 200



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prophrl train",
        description="FA-GRPO + FlowScale RL of an SFT policy inside a Prophet world model, rewarded by a judge.")
    parser.add_argument("--policy", required=True, help="SFT policy checkpoint directory (prophrl policy sft)")
    world = parser.add_mutually_exclusive_group(required=True)
    world.add_argument("--world-model", help="Prophet checkpoint directory")
    world.add_argument("--sim", metavar="ROBOT/TASK",
                       help="roll out in the physics sim instead of a world model (e.g. panda_sim/lift; starts: sim "
                            "seeds, --sim-states of them): the ceiling of RL in imagination")
    parser.add_argument("--replay-in-sim", metavar="ROBOT/TASK", default="",
                        help="with --world-model: start from sim seeds and execute every imagined rollout's actions "
                             "in the physics sim too (sim_replay), so each rollout's true success is logged beside "
                             "its reward: the judge's precision on RL's imagined rollouts, --mine-clips, and with "
                             "--sim-reward RL whose only error is the world model's frames")
    parser.add_argument("--sim-states", type=int, default=SIM_STATES,
                        help=f"with --sim or --replay-in-sim: how many sim seeds the starts are drawn from "
                             f"(default {SIM_STATES})")
    reward = parser.add_mutually_exclusive_group(required=True)
    reward.add_argument("--judge", nargs="+", metavar="JUDGE",
                        help="reward judge checkpoint directory; several: their ensemble, penalised by their "
                             "disagreement (RLConfig.judge_disagreement)")
    reward.add_argument("--sim-reward", action="store_true",
                        help="with --sim or --replay-in-sim: the sim's own task success as the reward (what the "
                             "true evaluation counts)")
    reward.add_argument("--test-reward", choices=sorted(EndEffectorDisplacementReward.DIRECTIONS),
                        help="FOR TESTS ONLY: a programmatic reward on the integrated end-effector motion")
    parser.add_argument("--test-reward-scale", type=float, default=0.02, help="metres (with --test-reward)")
    parser.add_argument("--mine-clips", action="store_true",
                        help="with --sim or --replay-in-sim: keep every rollout's judged clip and the sim's own "
                             "success in OUT/mined_clips, hard negatives for `prophrl judge train --mined "
                             "OUT/mined_clips`")
    parser.add_argument("--data", nargs="+", default=[],
                        help="bags2dataset output(s): the initial states (with --world-model)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, tensorboard, progress.jsonl)")
    parser.add_argument("--updates", type=int, default=0, help="total number of updates (default: the config's)")
    parser.add_argument("--config", default="", help="RL config JSON (RLConfig fields; default: built-in)")
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (torchrun: each rank its LOCAL_RANK)")
    parser.add_argument("--threads", type=_threads, default=0,
                        help="torch intra-op threads (0: torch's default, one per physical core)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def _threads(text: str) -> int:
    """--threads: a whole number >= 0 (anything else is a usage error, exit 2)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number >= 0 (0: torch's default), got {text!r}")
    return int(text)


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and ":" not in name and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch_device(name)
    if device.type == "cuda":
        if device.index is None:  # plain "cuda": the current device, named by its index from here on
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What a run of RL in imagination is set up from (`prophrl train`'s arguments, the trainer node's
    parameters)."""

    policy: str                        # SFT policy checkpoint directory
    data: tuple[str, ...]              # bags2dataset outputs: the initial states
    out: str                           # run directory
    world_model: str = ""              # Prophet checkpoint (in-process imagination)
    sim: str = ""                      # ROBOT/TASK: rollouts in the physics sim instead (sim_backend)
    replay_in_sim: str = ""            # ROBOT/TASK: the world model's rollouts also executed in the sim (sim_replay)
    sim_states: int = SIM_STATES       # with sim or replay_in_sim: the number of sim seeds the starts are drawn from
    sim_reward: bool = False           # with sim or replay_in_sim: the sim's own success as the reward
    judges: tuple[str, ...] = ()       # judge checkpoint(s) (in-process scoring; several: an ensemble)
    test_reward: str = ""              # FOR TESTS ONLY: EndEffectorDisplacementReward direction
    test_reward_scale: float = 0.02    # metres (with test_reward)
    updates: int = 0                   # total updates (0: the RL config's)
    config: str = ""                   # RL config JSON ("": the built-in RLConfig)
    resume: bool = False               # continue the newest checkpoint in out
    device: str = "cpu"
    mine_clips: bool = False           # with sim or replay_in_sim: the rollouts' judged clips to OUT/mined_clips

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainSettings":
        return cls(policy=args.policy, data=tuple(args.data), out=args.out, world_model=args.world_model or "",
                   sim=args.sim or "", replay_in_sim=args.replay_in_sim, sim_states=args.sim_states,
                   sim_reward=args.sim_reward,
                   judges=tuple(args.judge or ()), test_reward=args.test_reward or "",
                   test_reward_scale=args.test_reward_scale, updates=args.updates, config=args.config,
                   resume=args.resume, device=args.device, mine_clips=args.mine_clips)


def build_trainer(settings: TrainSettings, dist: DistContext | None = None, show_progress: bool = True,
                  on_checkpoint=None, on_update=None, backend: RolloutBackend | None = None,
                  scorer: RolloutScorer | None = None) -> tuple[Trainer, int]:
    """Everything a run of `prophrl train` sets up; returns (trainer, total updates). backend / scorer replace
    the in-process world model / judge (the ROS node passes its clients)."""
    dist = dist or DistContext()
    sim = parse_sim(settings.sim) if settings.sim else None
    replay = parse_sim(settings.replay_in_sim, "--replay-in-sim") if settings.replay_in_sim else None
    starts_sim = sim or replay     # the robot and task whose sim seeds are the starts
    if sim is not None and replay is not None:
        raise ConfigError("--replay-in-sim executes a world model's rollouts in the sim too; with --sim they are in "
                          "the sim already")
    if starts_sim is None and backend is None and not settings.data:
        raise ConfigError("--data is needed: the recorded episodes whose starts RL imagines from")
    if sim is not None and settings.data:
        raise ConfigError("--sim draws its starts from sim seeds; --data is for --world-model")
    if replay is not None and settings.data:
        raise ConfigError("--replay-in-sim starts from sim seeds (the sim replays them); drop --data")
    if settings.sim_reward and starts_sim is None:
        raise ConfigError("--sim-reward is the sim's own success: it needs --sim ROBOT/TASK or --replay-in-sim "
                          "ROBOT/TASK")
    if settings.mine_clips and starts_sim is None:
        raise ConfigError("--mine-clips labels the clips by the sim's own success: it needs --sim ROBOT/TASK or "
                          "--replay-in-sim ROBOT/TASK")
    device = _device(settings.device)
    inputs = [p for p in (settings.policy, settings.world_model, *settings.judges, *settings.data) if p]
    out = check_run_dir(settings.out, RL_RUN_OUTPUT, inputs=inputs)
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    if latest is not None and not settings.resume:
        raise ConfigError(f"{out} already holds checkpoints (newest {latest.name}): pass --resume to continue "
                          "that run, or choose another --out")
    if settings.resume and latest is not None:
        config = RLConfig.from_json_file(latest / ckpt.CONFIG_JSON, complete=True)
        given = RLConfig.from_json_file(settings.config) if settings.config else None
        if given is not None and dataclasses.replace(given, updates=config.updates) != config:
            raise ConfigError(f"--config {settings.config} differs from the config of the run in {out}")
    else:
        config = RLConfig.from_json_file(settings.config) if settings.config else RLConfig()
    if settings.updates:
        if settings.updates < 1:
            raise ConfigError("--updates must be >= 1")
        config = dataclasses.replace(config, updates=settings.updates)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    policy = VLAPolicy.from_pretrained(settings.policy).to(device)
    ref_policy = VLAPolicy.from_pretrained(settings.policy).to(device) if config.fa_grpo.kl_beta > 0 else None
    if backend is None and sim is not None:
        # the sim's reward reads no frames: only what the policy sees next is rendered, unless clips are mined
        backend = SimRollouts(*sim, policy.config.horizon, every_frame=settings.mine_clips or not settings.sim_reward)
    if backend is None:
        from prophrl_worldmodel.modeling_prophet import Prophet

        prophet = Prophet.from_pretrained(settings.world_model, map_location=device).eval().requires_grad_(False)
        backend = InProcessImagination(prophet, config.imagination_steps, config.shared_world_model_noise)
        mismatches = [eyes_mismatch(policy, prophet.config.image_size),
                      judge_steps_mismatch(settings.judges, backend.steps_per_clip)]
        for mismatch in filter(None, mismatches):
            warnings.warn(mismatch, stacklevel=2)
    if replay is not None:
        backend = ReplayedInSim(backend, SimRollouts(*replay, policy.config.horizon, image_size=REPLAY_IMAGE_SIZE,
                                                     every_frame=False))
    if scorer is None:
        if settings.sim_reward:
            scorer = SimSuccessScorer()
        elif settings.judges:
            scorer = JudgeScorer.from_pretrained(settings.judges, str(device), config.judge_disagreement)
        else:
            scorer = EndEffectorDisplacementReward.named(settings.test_reward, settings.test_reward_scale)
    if starts_sim is not None:
        sampler = InitialStateSampler.from_starts(sim_starts(*starts_sim, settings.sim_states), seed=config.seed,
                                                  rank=dist.rank, held_out=config.validation_states)
    else:
        sampler = InitialStateSampler(settings.data, seed=config.seed, context_frames=config.context_frames,
                                      rank=dist.rank, held_out=config.validation_states)
        too_short = short_rollouts(settings.data, config.chunks_per_rollout, policy.config.horizon)
        if too_short:
            warnings.warn(too_short, stacklevel=2)
    run_info = {"policy": str(settings.policy),
                "world_model": (f"sim:{settings.sim}" if sim else settings.world_model or type(backend).__name__),
                "reward": ("sim:success" if settings.sim_reward else
                           f"judge:{','.join(settings.judges)}" if settings.judges else f"test:{settings.test_reward}"),
                "data": [str(d) for d in settings.data], "world_size": dist.world_size,
                **({"replayed_in": f"sim:{settings.replay_in_sim}"} if replay else {})}
    trainer = Trainer(policy, backend, scorer, sampler, config, out, ref_policy=ref_policy,
                      on_checkpoint=on_checkpoint, on_update=on_update, show_progress=show_progress, dist=dist,
                      run_info=run_info, mine_clips=settings.mine_clips)
    if settings.resume:
        trainer.resume()
    return trainer, config.updates


SUMMARY_HEADER = ["update", "reward", "success", "eval success", "clip frac", "policy KL", "ratio pseudo-KL", "KL ref",
                  "s/update"]
TRUE_SUCCESS_HEADER = "true success"   # the world's own check beside the reward's, where the sim knows it
TRUTH_BLOCK = 10   # updates pooled per row of the judge-against-the-sim table


def _knows_truth(history: list[dict]) -> bool:
    return any("rollout/true_success_rate" in m for m in history)


def summary_header(history: list[dict]) -> list[str]:
    return SUMMARY_HEADER[:3] + [TRUE_SUCCESS_HEADER] * _knows_truth(history) + SUMMARY_HEADER[3:]


def summary_rows(history: list[dict], max_rows: int = 10) -> list[list[str]]:
    if not history:
        return []
    knows_truth = _knows_truth(history)
    picks = sorted({round(i * (len(history) - 1) / max(max_rows - 1, 1)) for i in range(max_rows)})
    rows = []
    for i in picks:
        m = history[i]
        ev = f"{m['eval/success_rate']:.2f}" if "eval/success_rate" in m else "-"
        truth = [f"{m['rollout/true_success_rate']:.2f}" if "rollout/true_success_rate" in m else "-"] * knows_truth
        rows.append([str(m["update"]), f"{m['rollout/reward_mean']:.3f}", f"{m['rollout/success_rate']:.2f}", *truth,
                     ev, f"{m['train/clip_fraction']:.3f}", f"{m.get('train/policy_kl', math.nan):.2e}",
                     f"{m['train/approx_kl_old']:.2e}", f"{m['train/kl']:.2e}",
                     f"{m['time/update_total_s']:.1f}"])
    return rows


def _local_rank(rank: int, world_size: int, port: int, argv: list[str], params_out: str | None) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = DistContext.from_env(args.device)
    import torch.distributed as torch_dist

    try:
        trainer, updates = build_trainer(TrainSettings.from_args(args), dist, show_progress=False)
        trainer.run(updates)
        if params_out:
            from safetensors.torch import save_file

            Path(params_out).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in trainer.policy.state_dict().items()},
                      str(Path(params_out) / f"rank{rank}.safetensors"),
                      metadata={"rewards": json.dumps(trainer.local_rewards)})
    finally:
        torch_dist.destroy_process_group()


def run_local_ranks(world_size: int, argv: Sequence[str], params_out: str | Path | None = None,
                    start_method: str = "spawn") -> None:
    """torchrun without torchrun: `world_size` CPU ranks of `prophrl train argv` on this machine (gloo),
    started with torch.multiprocessing. With params_out, every rank saves its final policy weights there
    as rank<r>.safetensors (metadata "rewards": its own rollouts' mean reward per update), to compare the
    ranks. start_method "fork" skips re-importing torch/diffusers in the children (fast, for tests; only
    from a process that has not started OpenMP worker threads or a process group)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_local_rank, args=(world_size, port, list(argv), str(params_out) if params_out else None),
                       nprocs=world_size, join=True, start_method=start_method)


def main(argv: Sequence[str] | None = None) -> int:
    """`prophrl train ...` (and under torchrun, one rank of it). Returns the exit status."""
    from prophrl_common.cli_errors import run_reporting_errors

    args = build_parser().parse_args(argv)
    return run_reporting_errors("prophrl train", lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    dist = None
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        dist = DistContext.from_env(args.device)
        trainer, updates = build_trainer(TrainSettings.from_args(args), dist, show_progress=not args.no_progress)
        start_update, start = trainer.update, time.perf_counter()
        try:
            history = trainer.run(updates)
        finally:
            if hasattr(trainer.backend, "shutdown"):  # the sims of --sim and --replay-in-sim
                trainer.backend.shutdown()
        elapsed = time.perf_counter() - start
    finally:
        if dist is not None and dist.enabled:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()
    if dist.is_main:
        done = trainer.update - start_update
        print_table(f"FA-GRPO ({trainer.config.variant}, FlowScale {'on' if trainer.config.use_flowscale else 'off'}) "
                    f"in {args.out}: {trainer.update} updates",
                    summary_header(history), summary_rows(history))
        if _knows_truth(history) and not args.sim_reward:
            rollouts = "imagined rollouts, their actions replayed in the sim" if args.replay_in_sim else "rollouts"
            print_table(f"the reward's successes against the sim's own on RL's {rollouts}, per {TRUTH_BLOCK} updates",
                        REWARD_TRUTH_HEADER, reward_truth_rows(reward_truth_blocks(history, TRUTH_BLOCK)),
                        float_format=".2f")
        rate = f"{3600 * done / elapsed:.1f} updates/hour" if done else "nothing to do"
        print(f"\nthis session: {done} updates in {elapsed:.1f} s ({rate}) on {dist.world_size} rank(s) x "
              f"{torch.get_num_threads()} torch thread(s); "
              f"last checkpoint: {trainer.last_checkpoint}")
        if trainer.selected is not None:
            chosen = trainer.selected
            print(f"selected on {chosen['validation_states']} held-out states: {Path(args.out) / ckpt.SELECTED_POLICY_DIR}"
                  f" (update {chosen['update']}{', the SFT policy' if chosen['update'] == 0 else ''}: imagined "
                  f"reward {chosen['eval/reward_mean']:.3f}, judged success {chosen['eval/success_rate']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
