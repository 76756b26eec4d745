"""`prophrl demo`: the loop end to end on the embedded defaults (tiny configs, simulated Panda, lift).

Stages (each skipped when its output already exists under --out, so a rerun after an interruption at
any point resumes: outputs are written atomically, a collection keeps its finished episodes and records
an interrupted one again, RL continues from its newest checkpoint):
  1. collect scripted demonstrations through the live ROS 2 stack (sim, executor + safety filter,
     expert, recorder, CollectEpisode) into rosbag2 MCAP bags, and "play" episodes of a noisy expert
     that makes grasp mistakes (in process, same bag format): the failures a world model and a judge
     must know, which clean demonstrations never show;
  2. bags2dataset: aligned training shards for each (`prophrl bags2dataset --lerobot` exports LeRobot v3);
  3. SFT of the tiny VLA policy (flow-matching head) on the successful demonstrations, then that policy's own
     episodes in the sim (in process, labelled by the sim's success) and their shards: the failures RL's first
     rollouts resemble, which the judge must call failures (hard negatives);
  4. Prophet: adapt the shipped pretrained world model (prophrl_worldmodel.pretrained: sim_tiny_32px, its
     flow starting at the start frame) to the demonstrations + play episodes, or with `--prophet-from
     scratch` train one on them alone (clips of 2 frames x 5 actions, so one Prophet clip = one policy chunk);
  5. reward judge: the video success classifier trained on the sim-labelled episodes (demonstrations, play and
     the SFT policy's) and on Prophet's replays of them (imagined clips labelled by the sim, the paper's
     recipe), at Prophet's resolution;
  6. FA-GRPO + FlowScale inside Prophet, scored by the judge (no physics sim in the loop);
  7. true evaluation in the physics sim on held-out seeds: SFT vs. FA-GRPO + FlowScale, executing whole
     chunks as in imagination (a `prophrl eval` report: report.md, summary.json, learning curves,
     real | imagined video).
Budgets are flags (defaults sized for a 2-core CPU); see `prophrl demo --help`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path


# Play episodes: a noisy expert that makes deliberate grasp mistakes, about half of them failures.
PLAY_FIRST_SEED = 50_000
PLAY_MAX_STEPS = 120
PLAY_NOISE_STD = 0.01
PLAY_SKILL = 0.4
# The SFT policy's own episodes for the judge (stage 3b): seeds above the play episodes' and below every held-out
# seed (bench/judge_ensemble.py 70_000, evaluation 100_000); as long as play episodes (a success takes 55-70 steps).
# On one demo's data and adapted Prophet (Panda lift, an SFT policy at 25 % true success, 60 of its episodes beside
# the 50 demonstrations and 40 play episodes, 2 judge seeds), on 30 held-out episodes of that policy replayed through
# the Prophet, the judge's AUC on the imagined clips rose from 0.85 to 0.91 and its precision at its threshold from
# 0.27 to 0.37 (recall 1.0 and 0.98): bench/judge_hard_negatives.py. The Prophet is not adapted on these episodes:
# adapted on them too, it scored a little better on pixels, but the judge trained on its replays ranked the held-out
# imagined clips worse (AUC 0.76 against 0.84-0.87).
POLICY_EPISODES_FIRST_SEED = 60_000
# The RL recipe of the demo and of bench/true_success.py and bench/reward_signal.py. No early termination:
# the judge's threshold is set for high recall, and on the tiny Prophet's clips it fires after 2-3 of the
# 6 chunks in almost every rollout, cutting rollouts before a lift can happen; the full clip is scored instead.
# lr 1e-5 (5e-5 gives an approx KL of 3.3 on the first update) and common world-model noise within a group
# (otherwise most of the within-group reward variance is world-model noise). Euler steps per Prophet clip: the
# world model's own (imagination_steps 0; one for the start-frame Prophets the demo trains), the same number
# the judge's imagined training clips were sampled with. A KL anchor to the SFT policy (kl_beta 1, about 0.14
# nats per chunk after 40 updates): without it, 40 updates fooled the judge and took true success from 48.3 %
# to 40.0 +- 7.3 % (3 RL seeds, 60 held-out states); with it, 50.0 +- 1.7 % (+1.7 pts [-2.3, +5.6], paired by
# state). Measured with `prophrl train` + `prophrl eval --episodes 60 --first-seed 100040 --replan-steps 10`
# on a demo's outputs (bench/true_success.py runs the same).
# A weaker anchor (kl_beta 0.3, 4 states per update, 3 RL seeds, 60 held-out states; README) gained +11.1 points at
# update 40 and +16.1 at 100 on the Panda door, where kl_beta 1 gained +7.8 and +8.3, but -0.6 and -1.7 on the Panda
# lift, where the judge's precision on RL's rollouts is 0.04-0.11: at the demo's 40 updates the two anchors differ
# by +3.3 points on the door and -0.6 [-3.4, +2.3] on the lift, so the demo keeps kl_beta 1.
# Rollouts last as long as the median demonstration (demo_rl_config): 6 chunks of 10 actions for the Panda lift,
# 9-10 for the UR5e's, whose scripted lift takes 64-109 steps.
DEMO_RL_CONFIG = {"group_size": 8, "states_per_update": 2, "checkpoint_every": 5,
                  "eval_every": 0, "learning_rate": 1e-5, "minibatch_size": 32, "early_termination": False,
                  "shared_world_model_noise": True, "imagination_steps": 0, "fa_grpo": {"kl_beta": 1.0}}


def demo_rl_config(demonstrations: Sequence[str | Path], horizon: int) -> dict:
    """DEMO_RL_CONFIG with rollouts of as many chunks of `horizon` actions as the median successful episode of
    `demonstrations` takes (prophrl_trainer.rollout_length)."""
    from prophrl_trainer.rollout_length import chunks_to_finish, demonstration_steps

    return {**DEMO_RL_CONFIG, "chunks_per_rollout": chunks_to_finish(demonstration_steps(demonstrations), horizon)}


# Stage 6's torch threads (`prophrl train --threads`): 0 is torch's default, one per physical core, so every core
# works on the update. On a 2-vCPU machine, alternating 1 and 2 threads in one process over the same rollouts:
# imagination 4.2 -> 3.4 s, policy update 9.7 -> 8.1 s (1.05x to 1.4x from one alternation to the next). The
# arithmetic is the same; bench/rl_updates_ab.sh runs each side with its own demo's threads.
DEMO_RL_THREADS = 0
# Stage 4: the Prophet the demo adapts (a shipped name or a checkpoint directory), or this word to train the
# DEMO_PROPHET_CONFIG from scratch on the demo's own episodes.
DEFAULT_PROPHET_FROM = "sim_tiny_32px"
PROPHET_FROM_SCRATCH = "scratch"
DEMO_PROPHET_CONFIG = "tiny_32px_start_frame"
# Full adaptation, 1000 steps (about 4 min): on one demo's 18 held-out episodes (6 chunks closed loop) it took the
# shipped Prophet from 19.1 to 19.3 dB and flow EPE 0.61 to 0.60 px, LoRA as long to 19.3 dB and 0.61 px.
DEMO_ADAPT_MODE = "full"
DEMO_PROPHET_STEPS = 1000

# A bag's end_reason when its episode reached an outcome (the recorder writes e.g. "shutdown" when it stops
# mid-episode; an in-process collection writes SUCCESS / FAILURE too).
FINISHED_END_REASONS = ("SUCCESS", "FAILURE")

DEMO_PARTS = {"policy": "policy_sft", "world_model": "prophet", "judge": "judge", "data": "dataset"}


def fill_parts_from_demo(args, parser) -> None:
    """For the benches: args.policy / world_model / judge / data (the SFT policy, Prophet, the judge and the
    initial-state dataset) default to a `prophrl demo` output directory's, args.demo; any missing is an error."""
    if args.demo is not None:
        for name, folder in DEMO_PARTS.items():
            if getattr(args, name) is None:
                setattr(args, name, [args.demo / folder] if name == "data" else args.demo / folder)
    missing = [name for name in DEMO_PARTS if getattr(args, name) is None]
    if missing:
        parser.error(f"give --demo or all of --policy --world-model --judge --data (missing: {missing})")


def _verb(code: int) -> None:
    """A stage run through another verb's main(): that verb already reported its error (one line), so the demo
    stops with its exit status; an interrupted verb interrupts the demo."""
    from prophrl_common.cli_errors import EXIT_INTERRUPTED

    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if code:
        raise SystemExit(code)


def run_stage(fn, since: int) -> None:
    """fn(), unless the verb's SIGINT counter (prophrl_common.cli_errors) has counted more than `since` Ctrl-Cs: a
    KeyboardInterrupt then, before fn or after it, also for a Ctrl-C that never surfaced because a library
    swallowed it, so no further stage starts."""
    from prophrl_common.cli_errors import sigint_count

    if sigint_count() > since:
        raise KeyboardInterrupt
    fn()
    if sigint_count() > since:
        raise KeyboardInterrupt


def collect_policy_episodes(policy: Path, robot: str, task: str, episodes: int, first_seed: int, out: Path,
                            horizon: int) -> list[Path]:
    """`episodes` sim episodes of `policy` from `first_seed` on, into bags under `out` (resumable): as long as the
    play episodes, a new chunk every `horizon` steps (whole chunks, as RL in imagination executes them). Returns
    the bags in seed order."""
    from prophrl_trainer.collect import CollectSettings, collect_direct

    rows = collect_direct(CollectSettings(robot=robot, task=task, episodes=episodes, first_seed=first_seed,
                                          max_steps=PLAY_MAX_STEPS, replan_steps=horizon, policy=str(policy)), out)
    return [Path(row["bag"]) for row in rows]


def finished_bags(directory: Path) -> list[Path]:
    """The bags under `directory` whose episode was recorded to its outcome (an interrupted run leaves one
    that was not: truncated, or closed by a recorder shutting down)."""
    from prophrl_common.bag_error import BagError
    from prophrl_data.bag_reader import is_bag, open_bag

    if not directory.is_dir():
        return []
    finished = []
    for path in sorted(directory.iterdir()):
        if not is_bag(path):
            continue
        try:
            bag = open_bag(path)
        except BagError:
            continue
        if not bag.recovered and bag.custom_data.get("end_reason") in FINISHED_END_REASONS:
            finished.append(path)
    return finished


def set_aside_interrupted_bags(directory: Path, aside: Path) -> None:
    """Move the bags of interrupted episodes out of `directory` (into `aside`, kept) so a resumed collection
    and its dataset hold finished episodes only."""
    from prophrl_data.bag_reader import is_bag

    if not directory.is_dir():
        return
    keep = set(finished_bags(directory))
    for path in sorted(directory.iterdir()):
        if is_bag(path) and path not in keep:
            aside.mkdir(parents=True, exist_ok=True)
            path.rename(aside / path.name)
            print(f"moved the bag of an interrupted episode to {aside / path.name}", flush=True)


def prophet_to_adapt(name_or_path: str, horizon: int) -> Path:
    """The checkpoint directory of --prophet-from, checked before any work: a Prophet whose clip is one policy
    chunk of `horizon` actions (ConfigError otherwise)."""
    from prophrl_common.config_io import ConfigError
    from prophrl_worldmodel.modeling_prophet import Prophet
    from prophrl_worldmodel.pretrained import resolve_prophet

    base = resolve_prophet(name_or_path)
    clip = Prophet.from_pretrained(base).config.action_horizon
    if clip != horizon:
        raise ConfigError(f"--prophet-from {name_or_path}: its clips are {clip} actions long, the tiny policy's "
                          f"chunks {horizon}; the demo needs one clip per chunk")
    return base


def run_demo(args: argparse.Namespace) -> int:
    from prophrl_common.cli_errors import sigint_count
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_trainer.learning_signal import no_learning_signal
    from prophrl_trainer.sft import SFTConfig, load_demonstrations, train_sft
    from prophrl_data.conversion import bags2dataset

    config = get_vla_config("tiny")
    prophet_base = None if args.prophet_from == PROPHET_FROM_SCRATCH else prophet_to_adapt(args.prophet_from,
                                                                                         config.horizon)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    ctrl_c_seen = sigint_count()

    def stage(name: str, done: bool, fn) -> None:
        print(f"\n== {name}{' (cached)' if done else ''}", flush=True)
        start = time.time()
        if not done:
            run_stage(fn, ctrl_c_seen)
        timings[name] = time.time() - start

    bags = out / "bags"

    def collect():
        from prophrl.collect_ros import collect_over_ros

        # Resuming: finished episodes (seeds 0, 1, ... in order) are kept, an interrupted one is set aside and
        # recorded again from its seed.
        set_aside_interrupted_bags(bags, out / "interrupted_bags")
        done = len(finished_bags(bags))
        collect_over_ros(argparse.Namespace(robot=args.robot, task=args.task, episodes=args.demos - done, seed=done,
                                            out=str(bags), teleop="scripted", noise_std=0.0, skill=1.0,
                                            max_steps=300))
    stage(f"1. collect {args.demos} scripted demos over ROS 2", len(finished_bags(bags)) >= args.demos, collect)
    play_bags = out / "play_bags"

    def collect_play():
        from prophrl_trainer.collect import CollectSettings, collect_direct

        # Seeds after the demonstrations' and far below the held-out evaluation seeds.
        collect_direct(CollectSettings(robot=args.robot, task=args.task, episodes=args.play_episodes,
                                       first_seed=PLAY_FIRST_SEED, max_steps=PLAY_MAX_STEPS,
                                       noise_std=PLAY_NOISE_STD, skill=PLAY_SKILL), play_bags)
    stage(f"1b. collect {args.play_episodes} play episodes (noisy expert, failures included)",
          len(finished_bags(play_bags)) >= args.play_episodes, collect_play)
    dataset = out / DEMO_PARTS["data"]
    # No LeRobot export here: it needs one constant camera rate, which a live sim on a busy machine may
    # miss; `prophrl bags2dataset --lerobot` makes one from the same bags.
    stage("2. bags2dataset", (dataset / "index.json").is_file(),
          lambda: bags2dataset([bags], dataset, args.robot, show_progress=True))
    play_dataset = out / "dataset_play"
    if args.play_episodes:
        stage("2b. bags2dataset of the play episodes", (play_dataset / "index.json").is_file(),
              lambda: bags2dataset([play_bags], play_dataset, args.robot, show_progress=True))
    world_data = [dataset, play_dataset] if args.play_episodes else [dataset]
    checkpoint = out / DEMO_PARTS["policy"]
    stage(f"3. SFT ({args.sft_steps} steps)", (checkpoint / "model.safetensors").is_file(),
          lambda: train_sft(load_demonstrations(dataset, config.horizon), config,
                            SFTConfig(steps=args.sft_steps), checkpoint, log_dir=out / "tensorboard" / "sft"))

    policy_bags = out / "policy_bags"

    def collect_policy():
        collect_policy_episodes(checkpoint, args.robot, args.task, args.policy_episodes, POLICY_EPISODES_FIRST_SEED,
                                policy_bags, config.horizon)
    policy_dataset = out / "dataset_policy"
    judge_data = list(world_data)
    weak_start = None
    if args.policy_episodes:
        stage(f"3b. collect {args.policy_episodes} episodes of the SFT policy (the judge's hard negatives)",
              len(finished_bags(policy_bags)) >= args.policy_episodes, collect_policy)
        stage("3c. bags2dataset of the SFT policy's episodes", (policy_dataset / "index.json").is_file(),
              lambda: bags2dataset([policy_bags], policy_dataset, args.robot, show_progress=True))
        judge_data.append(policy_dataset)
        if weak_start := no_learning_signal(policy_dataset, DEMO_RL_CONFIG["group_size"]):
            print(f"warning: SFT: {weak_start}", flush=True)

    world_model = out / DEMO_PARTS["world_model"]

    def world_model_stage():
        from prophrl_worldmodel.configuration_prophet import get_prophet_config
        from prophrl_worldmodel.training import adapt, pretrain

        if prophet_base is None:
            pretrain(world_data, get_prophet_config(DEMO_PROPHET_CONFIG), world_model,
                     vae_steps=args.prophet_vae_steps, steps=args.prophet_steps,
                     log_dir=out / "tensorboard" / "prophet")
        else:
            adapt(prophet_base, world_data, args.prophet_steps, args.prophet_adapt_mode, world_model,
                  log_dir=out / "tensorboard" / "prophet")
    how = (f"pretrain from scratch ({args.prophet_vae_steps} VAE + {args.prophet_steps} denoiser steps)"
           if prophet_base is None else
           f"adapt {args.prophet_from} ({args.prophet_adapt_mode}, {args.prophet_steps} steps)")
    stage(f"4. Prophet: {how}", (world_model / "model.safetensors").is_file(), world_model_stage)

    judge = out / DEMO_PARTS["judge"]

    def train_judge():
        from prophrl_worldmodel.judge_cli import main as judge_main

        _verb(judge_main(["train", "--data", *map(str, judge_data), "--out", str(judge), "--steps",
                          str(args.judge_steps), "--imagined-from", str(world_model), "--image-size", "32"]))
    stage(f"5. reward judge ({args.judge_steps} steps)", (judge / "model.safetensors").is_file(), train_judge)

    rl_run = out / "rl_fa_grpo_flowscale"

    def reinforce():
        from prophrl_trainer.train_cli import main as train_main

        rl_config = out / "rl_config.json"
        rl_config.write_text(json.dumps({**demo_rl_config([dataset], config.horizon), "updates": args.rl_updates},
                                        indent=1))
        _verb(train_main(["--policy", str(checkpoint), "--world-model", str(world_model), "--judge", str(judge),
                          "--data", str(dataset), "--out", str(rl_run), "--updates", str(args.rl_updates),
                          "--config", str(rl_config), "--threads", str(DEMO_RL_THREADS), "--resume"]))
    progress = rl_run / "progress.jsonl"
    stage(f"6. FA-GRPO + FlowScale in imagination ({args.rl_updates} updates)",
          progress.is_file() and len(progress.read_text().splitlines()) >= args.rl_updates, reinforce)

    report_dir = out / "report"

    def evaluate():
        from prophrl_trainer.report import main as report_main

        _verb(report_main(["--policy", f"SFT={checkpoint}", "--policy", f"FA-GRPO+FlowScale={rl_run}",
                           "--robot", args.robot, "--task", args.task, "--episodes", str(args.eval_episodes),
                           "--replan-steps", str(config.horizon), "--jobs", "2",
                           "--world-model", str(world_model), "--out", str(report_dir)]))
    stage(f"7. true evaluation in the sim ({args.eval_episodes} held-out seeds)",
          (report_dir / "summary.json").is_file(), evaluate)
    summary = json.loads((report_dir / "summary.json").read_text())
    from prophrl_trainer.report import ci_text, gain_text

    print(f"\nProphRL demo: {args.robot} / {args.task}, tiny configs, outputs in {out}")
    print(f"{'policy':20s} {'true success %':>15s}  {'95 % CI':>14s}  gain over the first (paired by state, 95 % CI)")
    for name, entry in summary["policies"].items():
        task = entry["tasks"][args.task]
        print(f"{name:20s} {100 * task['mean']:15.1f}  {ci_text(task):>14s}  {gain_text(task)}")
    print(f"report: {report_dir / 'report.md'}")
    if weak_start:
        print(f"warning: SFT: {weak_start}")
    print("\nstage timings: " + ", ".join(f"{k.split(' ')[0]} {v:.0f} s" for k, v in timings.items()))
    return 0
