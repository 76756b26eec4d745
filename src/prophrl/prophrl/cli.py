"""The `prophrl` command line."""

from __future__ import annotations

import argparse
import shlex
import sys

from prophrl_common.cli_errors import one_line, run_reporting_errors
from prophrl_common.tables import print_table
from prophrl_trainer.held_out import EVAL_MAX_STEPS, HELD_OUT_SEED_BASE


def _cmd_up(args: argparse.Namespace) -> int:
    from prophrl.profiles import check_paths, load_profile, parse_overrides
    from prophrl.up import node_command, run_profile

    profile = load_profile(args.profile, parse_overrides(args.overrides))
    if args.dry_run:
        for spec in profile.nodes:
            print(f"# {spec.name}{'' if spec.required else ' (optional)'}")
            print(shlex.join(node_command(spec)))
        return 0
    check_paths(profile)
    return run_profile(profile)


def _cmd_profiles(_args: argparse.Namespace) -> int:
    from prophrl.profiles import available_profiles, load_profile

    for name in available_profiles():
        profile = load_profile(name)
        args = ", ".join(f"{a.name}:={a.default}" for a in profile.arguments)
        print(f"{name:14s} {profile.description}")
        print(f"{'':14s} nodes: {', '.join(n.name for n in profile.nodes)}; arguments: {args or '-'}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from prophrl.node_parameters_index import NODE_PARAMETERS, describe_parameters

    for executable in [args.node] if args.node else sorted(NODE_PARAMETERS):
        print(describe_parameters(executable))
    return 0


def _cmd_policy_sft(args: argparse.Namespace) -> int:
    import dataclasses

    from prophrl_common.config_io import ConfigError
    from prophrl_common.devices import torch_device
    from prophrl_common.outputs import check_output_dir, check_writable_dir
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_trainer.sft import SFT_OUTPUT, SFTConfig, add_imagined_views, load_demonstrations, train_sft

    torch_device(args.device)  # before the data is read
    overrides = {"horizon": args.horizon} if args.horizon else {}
    if args.camera_size is not None:
        overrides["camera_size"] = args.camera_size
    policy_config = get_vla_config(args.config, **overrides)
    cfg = SFTConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                    only_successful=not args.include_failures,
                    imagined_view_share=args.imagined_share if args.imagined_views else 0.0)
    if args.imagined_steps < 0:
        raise ConfigError(f"--imagined-steps must be >= 0, got {args.imagined_steps}")
    log_dir = args.log_dir or f"{args.out}/tensorboard"
    check_output_dir(args.out, SFT_OUTPUT, overwrite=args.overwrite, inputs=[args.dataset])
    check_writable_dir(log_dir, inputs=[args.dataset], option="--log-dir")
    prophet = None
    if args.imagined_views:
        from prophrl_worldmodel.modeling_prophet import Prophet
        from prophrl_worldmodel.pretrained import resolve_prophet

        prophet = Prophet.from_pretrained(resolve_prophet(args.imagined_views), map_location=args.device).eval()
    data = load_demonstrations(args.dataset, policy_config.horizon, cfg.only_successful)
    if prophet is not None:
        data = add_imagined_views(data, prophet, args.imagined_steps or None, seed=args.seed,
                                  source=str(args.imagined_views))
    print(f"SFT on {len(data)} samples from {len(set(data.episode_index.tolist()))} episodes; "
          f"policy config {policy_config.name}: {dataclasses.asdict(policy_config)}")
    path, losses = train_sft(data, policy_config, cfg, args.out, log_dir=log_dir, overwrite=args.overwrite,
                             device=args.device)
    print(f"saved {path} (final loss {sum(losses[-50:]) / len(losses[-50:]):.4f})")
    return 0


def _cmd_policy_distill(args: argparse.Namespace) -> int:
    from prophrl_common.devices import torch_device
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.distill import DISTILL_OUTPUT, DistillConfig, distill_policy
    from prophrl_common.outputs import check_output_dir
    from prophrl_trainer.sft import concatenate_demonstrations, load_demonstrations

    torch_device(args.device)  # before the data is read
    given = {"num_steps": args.num_steps, "teacher_steps": args.teacher_steps, "steps": args.steps,
             "batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed}
    cfg = DistillConfig(**{key: value for key, value in given.items() if value is not None})
    check_output_dir(args.out, DISTILL_OUTPUT, overwrite=args.overwrite, inputs=[args.checkpoint, *args.dataset])
    horizon = VLAPolicy.from_pretrained(args.checkpoint).config.horizon
    data = concatenate_demonstrations([load_demonstrations(d, horizon, only_successful=False) for d in args.dataset])
    print(f"distilling {args.checkpoint} into {cfg.num_steps} steps on {len(data)} observations of "
          f"{len(set(data.episode_index.tolist()))} episodes")
    path, summary = distill_policy(args.checkpoint, data, cfg, args.out, overwrite=args.overwrite, device=args.device)
    print_table(f"saved {path}: chunks vs the teacher's own ({summary['teacher_steps']} steps) for the same noise, "
                f"{summary['validation_observations']} observations of {summary['validation']}",
                ["sampler", "steps", "RMS difference (normalised action units)"],
                [["teacher", cfg.num_steps, f"{summary['teacher_at_student_steps_rms']:.4f}"],
                 ["distilled student", cfg.num_steps, f"{summary['student_rms']:.4f}"]])
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from prophrl_trainer.collect import CollectSettings, collect_direct

    from prophrl_common.config_io import ConfigError

    if args.replan_steps < 1:
        raise ConfigError("--replan-steps must be >= 1")
    if args.policy and not args.direct:
        raise ConfigError("--policy collects in process: pass --direct too")
    if args.teleop != "scripted" or not args.direct:
        from prophrl.collect_ros import collect_over_ros

        rows = collect_over_ros(args)
    else:
        settings = CollectSettings(robot=args.robot, task=args.task, episodes=args.episodes, first_seed=args.seed,
                                   max_steps=args.max_steps, noise_std=args.noise_std, skill=args.skill,
                                   camera=args.camera, image_size=args.image_size, policy=args.policy,
                                   replan_steps=args.replan_steps, device=args.device)
        rows = collect_direct(settings, args.out)
    successes = sum(r["success"] for r in rows)
    print_table(f"collected {len(rows)} episodes into {args.out}: {successes}/{len(rows)} successful",
                 ["seed", "success", "steps", "bag"], [[r["seed"], r["success"], r["steps"], r["bag"]] for r in rows])
    return 0


def _cmd_policy_eval(args: argparse.Namespace) -> int:
    from prophrl_common.config_io import ConfigError
    from prophrl_trainer.evaluation import EvalSettings, evaluate_policy, mean_std

    if args.num_steps < 0:
        raise ConfigError("--num-steps must be >= 0 (0: the checkpoint's own sampler)")
    rows = []
    for task in args.task:
        rates = []
        for policy_seed in range(args.policy_seeds):
            settings = EvalSettings(robot=args.robot, task=task, episodes=args.episodes, max_steps=args.max_steps,
                                    first_seed=args.first_seed, mode=args.mode, device=args.device,
                                    num_steps=args.num_steps)
            rates.append(evaluate_policy(args.checkpoint, settings, policy_seed=policy_seed).success_rate)
        mean, std = mean_std(rates)
        rows.append([task, args.robot, args.episodes, f"{100 * mean:.1f} +- {100 * std:.1f}"])
    print_table(f"true success of {args.checkpoint} (held-out seeds from {args.first_seed})",
                 ["task", "robot", "episodes/seed", "success % (mean +- std over policy seeds)"], rows)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from prophrl.demo import run_demo

    return run_demo(args)


# Verbs whose options belong to another module's own argparse parser: verb -> ("module:main", help).
PASSTHROUGH_VERBS = {
    "bags2dataset": ("prophrl_data.cli:main_bags2dataset",
                     "rosbag2 episodes -> training shards (and a LeRobot v3 export)"),
    "lerobot2dataset": ("prophrl_data.cli:main_lerobot2dataset",
                        "a LeRobot v3 dataset -> training shards (what bags2dataset writes)"),
    "worldmodel": ("prophrl_worldmodel.cli:main", "Prophet world model: pretrain | adapt | eval"),
    "judge": ("prophrl_worldmodel.judge_cli:main", "reward judge: train | eval"),
    "train": ("prophrl_trainer.train_cli:main", "FA-GRPO + FlowScale policy training inside the world model"),
    "eval": ("prophrl_trainer.report:main", "true success of policies in the physics sim -> report directory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prophrl", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    up = verbs.add_parser("up", help="run a launch profile's nodes (no ros2 launch needed)")
    up.add_argument("profile", help="profile name (config/profiles/NAME.yaml) or a path to one")
    up.add_argument("overrides", nargs="*", metavar="name:=value", help="profile arguments, e.g. robot:=ur5e_sim")
    up.add_argument("--dry-run", action="store_true", help="print the node commands and exit")
    up.set_defaults(func=_cmd_up)

    profiles = verbs.add_parser("profiles", help="list launch profiles, their nodes and arguments")
    profiles.set_defaults(func=_cmd_profiles)

    params = verbs.add_parser("params", help="every node's parameters: type, default, rule, description")
    params.add_argument("node", nargs="?", help="a node's console script, e.g. executor_node (default: all)")
    params.set_defaults(func=_cmd_params)

    for verb, (_target, help_text) in PASSTHROUGH_VERBS.items():
        passthrough = verbs.add_parser(verb, add_help=False, help=f"{help_text}; --help for options")
        passthrough.add_argument("rest", nargs=argparse.REMAINDER)

    policy = verbs.add_parser("policy", help="VLA policy: sft | distill | eval").add_subparsers(dest="policy_verb",
                                                                                             required=True)
    sft = policy.add_parser("sft", help="supervised fine-tuning on a bags2dataset output")
    sft.add_argument("--dataset", required=True, help="bags2dataset output directory")
    sft.add_argument("--config", default="tiny", help="named policy config (tiny, tiny_pretrained, base)")
    sft.add_argument("--out", required=True, help="checkpoint directory to write")
    sft.add_argument("--steps", type=int, default=2000)
    sft.add_argument("--batch-size", type=int, default=32)
    sft.add_argument("--lr", type=float, default=3e-4)
    sft.add_argument("--horizon", type=int, default=0, help="override the config's chunk length")
    sft.add_argument("--camera-size", type=int, default=None,
                     help="reduce camera frames to this resolution first, as Prophet does (its image_size: the same "
                          "eyes on the robot and in imagination); 0: none (default: the config's)")
    sft.add_argument("--seed", type=int, default=0)
    sft.add_argument("--imagined-views", metavar="PROPHET", default="",
                     help="also learn from this world model's view of the demonstrations: each frame imagined one "
                          "chunk ahead of the recording (a checkpoint adapted to this robot)")
    sft.add_argument("--imagined-share", type=float, default=0.5,
                     help="with --imagined-views: the share of the samples that read their imagined view")
    sft.add_argument("--imagined-steps", type=int, default=0,
                     help="with --imagined-views: Euler steps per imagined clip, those RL imagines with (0: the "
                          "world model's own)")
    sft.add_argument("--include-failures", action="store_true", help="also clone failed demonstrations")
    sft.add_argument("--log-dir", default="", help="TensorBoard directory (default OUT/tensorboard)")
    sft.add_argument("--overwrite", action="store_true",
                     help="replace OUT if it is a previous SFT checkpoint (never anything else)")
    sft.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    sft.set_defaults(func=_cmd_policy_sft)
    distill = policy.add_parser("distill",
                                help="a few-step copy of a policy's sampler (progressive distillation): faster chunks")
    distill.add_argument("--checkpoint", required=True, help="the teacher: a policy checkpoint (SFT or RL)")
    distill.add_argument("--dataset", nargs="+", required=True,
                         help="bags2dataset outputs whose observations the student learns on (failed episodes too)")
    distill.add_argument("--out", required=True, help="checkpoint directory to write")
    # Defaults: prophrl_trainer.distill.DistillConfig
    distill.add_argument("--num-steps", type=int, help="the student's denoising steps per chunk (its sampler)")
    distill.add_argument("--teacher-steps", type=int, help="the teacher's (0: its checkpoint's own)")
    distill.add_argument("--steps", type=int, help="training steps")
    distill.add_argument("--batch-size", type=int)
    distill.add_argument("--lr", type=float)
    distill.add_argument("--seed", type=int)
    distill.add_argument("--overwrite", action="store_true",
                         help="replace OUT if it is a previous distilled checkpoint (never anything else)")
    distill.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    distill.set_defaults(func=_cmd_policy_distill)
    ev = policy.add_parser("eval", help="true success in the physics sim on seeded held-out initial states")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--robot", default="panda_sim")
    ev.add_argument("--task", nargs="+", default=["lift"])
    ev.add_argument("--episodes", type=int, default=20)
    ev.add_argument("--policy-seeds", type=int, default=3, help="sampling seeds: mean +- std is over these")
    ev.add_argument("--first-seed", type=int, default=HELD_OUT_SEED_BASE, help="first held-out initial-state seed")
    ev.add_argument("--max-steps", type=int, default=EVAL_MAX_STEPS, help="a held-out episode's step limit")
    ev.add_argument("--mode", choices=("ode", "sde"), default="ode")
    ev.add_argument("--num-steps", type=int, default=0,
                    help="denoising steps per chunk (0: the checkpoint's own; the policy node's num_steps)")
    ev.add_argument("--device", default="cpu", help="where the policy runs: cpu | cuda | cuda:N")
    ev.set_defaults(func=_cmd_policy_eval)

    collect = verbs.add_parser("collect", help="record demonstration episodes (one rosbag2 MCAP bag each)")
    collect.add_argument("--robot", default="panda_sim")
    collect.add_argument("--task", default="lift")
    collect.add_argument("--episodes", type=int, default=10)
    collect.add_argument("--teleop", choices=("scripted", "keyboard", "spacemouse"), default="scripted")
    collect.add_argument("--out", default="data/bags")
    collect.add_argument("--seed", type=int, default=0, help="first episode seed")
    collect.add_argument("--max-steps", type=int, default=300, help="episode length limit (control steps)")
    collect.add_argument("--noise-std", type=float, default=0.0, help="scripted expert action noise")
    collect.add_argument("--skill", type=float, default=1.0, help="scripted expert: 1 = no deliberate mistakes")
    collect.add_argument("--camera", default="", help="agentview | frontview | sideview | birdview (default: the "
                         "task's own view, as the sim node uses)")
    collect.add_argument("--image-size", type=int, default=128)
    collect.add_argument("--direct", action="store_true",
                         help="scripted only: run sim + expert in this process (fast) instead of the live nodes")
    collect.add_argument("--policy", default="",
                         help="with --direct: a policy checkpoint acts instead of the expert (its own episodes, "
                              "labelled by the sim's success: e.g. an RL policy's failures for `prophrl judge train`)")
    collect.add_argument("--replan-steps", type=int, default=2,
                         help="with --direct: actions executed from each chunk before the next is asked for")
    collect.add_argument("--device", default="cpu", help="with --policy: where it runs (cpu | cuda | cuda:N)")
    collect.set_defaults(func=_cmd_collect)

    from prophrl.demo import (DEFAULT_PROPHET_FROM, DEMO_ADAPT_MODE, DEMO_PROPHET_CONFIG, DEMO_PROPHET_STEPS,
                              PROPHET_FROM_SCRATCH)

    demo = verbs.add_parser("demo", help="the whole loop end to end on the embedded defaults (resumable)")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--robot", default="panda_sim")
    demo.add_argument("--task", default="lift")
    demo.add_argument("--demos", type=int, default=50)
    demo.add_argument("--play-episodes", type=int, default=40,
                      help="noisy, mistake-making expert episodes (failures included) for Prophet and the judge")
    demo.add_argument("--sft-steps", type=int, default=2000)
    demo.add_argument("--policy-episodes", type=int, default=30,
                      help="the SFT policy's own sim episodes, added to the judge's training clips (its failures are "
                           "what RL's rollouts look like at first); 0: none")
    demo.add_argument("--prophet-from", default=DEFAULT_PROPHET_FROM, metavar="NAME|DIR|scratch",
                      help="the Prophet adapted to the demo's episodes: a shipped one's name "
                           f"(prophrl_worldmodel.pretrained), a checkpoint directory, or '{PROPHET_FROM_SCRATCH}' "
                           f"to train {DEMO_PROPHET_CONFIG} on the demo's episodes alone (default {DEFAULT_PROPHET_FROM})")
    demo.add_argument("--prophet-adapt-mode", choices=("lora", "full"), default=DEMO_ADAPT_MODE,
                      help="what adapting --prophet-from trains: LoRA adapters or every denoiser weight")
    demo.add_argument("--prophet-steps", type=int, default=DEMO_PROPHET_STEPS,
                      help="denoiser steps: of the adaptation, or of training from scratch")
    demo.add_argument("--prophet-vae-steps", type=int, default=2000, help="VAE steps (from scratch only)")
    demo.add_argument("--judge-steps", type=int, default=400)
    demo.add_argument("--rl-updates", type=int, default=40)
    demo.add_argument("--eval-episodes", type=int, default=40,
                      help="held-out states of the final evaluation (both policies in parallel processes)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _run_passthrough(verb: str, rest: list[str]) -> int:
    import importlib

    module_name, function_name = PASSTHROUGH_VERBS[verb][0].split(":")
    return run_reporting_errors(f"prophrl {verb}",
                                lambda: getattr(importlib.import_module(module_name), function_name)(rest))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH_VERBS:
        return _run_passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    verb = " ".join(v for v in (args.verb, getattr(args, "policy_verb", None)) if v)

    def run_verb() -> int:
        from prophrl.collect_ros import CollectError
        from prophrl_common.startup import StartupTimeout

        try:
            return args.func(args)
        except (StartupTimeout, CollectError) as exc:  # the nodes failed, not the user: exit 1
            print(f"prophrl {verb}: error: {one_line(exc)}", file=sys.stderr)
            return 1

    return run_reporting_errors(f"prophrl {verb}", run_verb)


if __name__ == "__main__":
    sys.exit(main())
