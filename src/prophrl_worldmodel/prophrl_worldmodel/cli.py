"""`prophrl worldmodel pretrain|adapt|eval`: Prophet pretraining, few-shot adaptation and fidelity evaluation.

    prophrl worldmodel pretrain --data DIR [DIR ...] --out CKPT [--config tiny] [--steps N] [--vae-steps N]
        [--state-dir DIR]   (an interrupted run, started again with the same arguments, continues from DIR)
    prophrl worldmodel adapt --checkpoint CKPT (--bags BAG ... | --data DIR ...) --steps N [--mode lora|full] --out CKPT
    prophrl worldmodel eval --data DIR ... [--checkpoint CKPT ...] [--labels NAME ...] --out DIR

Every verb ends with a summary table; eval also writes OUT/summary.json (baseline + every checkpoint).
Bad input (a missing dataset, a malformed bag or checkpoint) is one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import OutputKind, check_run_dir
from prophrl_common.tables import format_table



# What `prophrl worldmodel eval --out` writes; it is rewritten in place, never into another kind of directory.
FIDELITY_OUTPUT = OutputKind("fidelity evaluation", frozenset({"summary.json", "videos"}), ("fidelity_",))


def _add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--action-dropout", type=float, help="share of training clips conditioned on no actions, which "
                   "classifier-free guidance on the actions needs (default: the config's action_dropout)")
    p.add_argument("--action-guidance", type=float, help="sampling follows v_none + this x (v_actions - v_none); "
                   "1: the plain action-conditioned velocity (default: the config's action_guidance)")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import json

    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.pretrained import resolve_prophet
    from prophrl_worldmodel.training import SUMMARY_NAME, pretrain

    overrides = {"image_size": args.image_size} if args.image_size else {}
    if args.residual is not None:
        overrides["predict_residual"] = args.residual == "on"
    if args.flow_source is not None:
        overrides["flow_source"] = args.flow_source
    if args.source_noise is not None:
        overrides["source_noise"] = args.source_noise
    if args.motion_weight is not None:
        overrides["motion_loss_weight"] = args.motion_weight
    if args.vae_colour_weight is not None:
        overrides["vae_colour_weight"] = args.vae_colour_weight
    if args.action_dropout is not None:
        overrides["action_dropout"] = args.action_dropout
    if args.action_guidance is not None:
        overrides["action_guidance"] = args.action_guidance
    config = get_prophet_config(args.config, **overrides)
    vae_from = resolve_prophet(args.vae_from) if args.vae_from else None
    out = pretrain(args.data, config, args.out, vae_steps=args.vae_steps, steps=args.steps, vae_from=vae_from,
                   batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   log_dir=args.log_dir or Path(args.out).with_name(Path(args.out).name + "_tensorboard"),
                   device=args.device, overwrite=args.overwrite, state_dir=args.state_dir, save_every=args.save_every)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    keys = ("train_episodes", "held_out_episodes", "train_clips", "vae_steps", "vae_l1_first", "vae_l1_last", "steps",
            "loss_first", "loss_last", "held_out_loss", "step_time_s", "vae_seconds", "denoiser_seconds")
    print(format_table(f"\npretrained Prophet ({config.name}, {config.image_size} px) saved to {out}",
                       ["metric", "value"], [[k, summary.get(k)] for k in keys]))
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from prophrl_worldmodel.pretrained import resolve_prophet
    from prophrl_worldmodel.training import adapt, adapt_from_bags

    checkpoint = resolve_prophet(args.checkpoint)
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, lora_rank=args.lora_rank,
                  log_dir=args.log_dir, device=args.device, overwrite=args.overwrite,
                  motion_loss_weight=args.motion_weight, action_dropout=args.action_dropout,
                  action_guidance=args.action_guidance)
    if args.bags:
        result = adapt_from_bags(checkpoint, args.bags, args.steps, args.mode, args.out, robot=args.robot,
                                 dataset_dir=args.dataset_out, **common)
    else:
        if args.robot:
            raise ConfigError("--robot only applies to --bags (a dataset knows its robot)")
        result = adapt(checkpoint, args.data, args.steps, args.mode, args.out, **common)
    print(format_table(f"\nadapted Prophet ({args.mode}) saved to {result.checkpoint_path}", ["metric", "value"],
                       [[k, v] for k, v in result.metrics.items()]))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet
    from prophrl_common.atomic_io import write_json_atomic
    from prophrl_worldmodel.pretrained import resolve_prophet
    from prophrl_worldmodel.training import METRIC_FIELDS, evaluate_fidelity

    checkpoints = [resolve_prophet(c) for c in args.checkpoint or []]
    check_run_dir(args.out, FIDELITY_OUTPUT, inputs=[*args.data, *checkpoints])
    labels = list(args.labels or [c.name for c in checkpoints])
    if len(labels) != len(checkpoints):
        raise ConfigError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoint(s)")
    if "baseline" in labels or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be distinct and not 'baseline': {labels}")
    for data in args.data:  # fail on a missing dataset before loading any model
        if not (Path(data) / "index.json").is_file():
            raise ConfigError(f"{data}: not a bags2dataset output (no index.json)")
    models = [Prophet.from_pretrained(c, map_location=args.device) for c in checkpoints]
    if models:
        config = models[0].config
    else:
        config = get_prophet_config(args.config, **({"image_size": args.image_size} if args.image_size else {}))
    common = dict(episodes=args.episodes, chunks=args.chunks, seed=args.seed, split=args.split,
                  write_videos=not args.no_videos)
    reports = [evaluate_fidelity(None, args.data, args.out, config=config, label="baseline", **common)]
    for model, label in zip(models, labels):
        reports.append(evaluate_fidelity(model, args.data, args.out, num_steps=args.num_steps, label=label, **common))
    out = Path(args.out)
    summary = {"datasets": [str(d) for d in args.data], "checkpoints": dict(zip(labels, map(str, checkpoints))),
               "split": args.split, "models": {r["label"]: r for r in reports}}
    write_json_atomic(out / "summary.json", summary)
    names = {"psnr": "PSNR dB", "ssim": "SSIM", "flow_epe": "flow EPE px", "flow_cos": "flow cos"}
    rows = [[r["label"], *(r["mean"][m] for m in METRIC_FIELDS), r["num_episodes"], r["seconds"]] for r in reports]
    print(format_table(f"\nfidelity: {reports[0]['num_episodes']} {args.split} episode(s) x {args.chunks} chunk(s), "
                       f"closed loop from the first frame (mean over horizons)",
                       ["model", *(names[m] for m in METRIC_FIELDS), "episodes", "seconds"], rows))
    horizons = len(reports[0]["horizon"]["psnr"])
    print(format_table(f"\nPSNR dB per predicted frame (every {reports[0]['frame_period_s']:.2f} s)",
                       ["model", *(f"h{h + 1}" for h in range(horizons))],
                       [[r["label"], *r["horizon"]["psnr"]] for r in reports]))
    print(f"\nwrote {out / 'summary.json'}" + ("" if args.no_videos else f" and videos under {out / 'videos'}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prophrl_worldmodel.configuration_prophet import FLOW_SOURCES
    from prophrl_worldmodel.training import DEFAULT_SAVE_EVERY

    parser = argparse.ArgumentParser(prog="prophrl worldmodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("pretrain", help="train a Prophet on bags2dataset directories")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="bags2dataset output directories")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--config", default="tiny", help="named Prophet config (default tiny)")
    p.add_argument("--image-size", type=int, help="override the config's image size")
    p.add_argument("--steps", type=int, default=2000, help="denoiser steps")
    p.add_argument("--vae-steps", type=int, default=500, help="VAE steps before the denoiser (0: none)")
    p.add_argument("--vae-from", metavar="CKPT", help="start from this Prophet's VAE, a checkpoint or a shipped Prophet's name "
                   "(with --vae-steps 0: keep it)")
    p.add_argument("--residual", choices=("on", "off"), help="predict each future latent's change from the start "
                                                            "frame (default: the config's predict_residual)")
    p.add_argument("--flow-source", choices=FLOW_SOURCES, help="where sampling starts: noise, or the "
                   "start frame plus --source-noise (default: the config's flow_source)")
    p.add_argument("--source-noise", type=float, help="noise std added to the start frame (flow source start_frame)")
    p.add_argument("--motion-weight", type=float, help="weight the loss 1 + this x each latent position's change "
                   "from the start frame relative to the clip's mean (default: the config's motion_loss_weight)")
    p.add_argument("--vae-colour-weight", type=float, help="weight the VAE's L1 1 + this on saturated, bright pixels "
                   "(small coloured objects; default: the config's vae_colour_weight)")
    _add_guidance_arguments(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", help="TensorBoard directory (default OUT_tensorboard)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a previous Prophet checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--state-dir", metavar="DIR", help="save the training state here every --save-every steps; the "
                   "same command run again after an interruption continues from it")
    p.add_argument("--save-every", type=int, default=DEFAULT_SAVE_EVERY, help="steps between two saved training "
                   f"states (default {DEFAULT_SAVE_EVERY})")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("adapt", help="few-shot adaptation of a Prophet to new episodes (LoRA or full)")
    p.add_argument("--checkpoint", required=True,
                   help="the Prophet to adapt: a checkpoint directory or a shipped one's name (e.g. sim_tiny_32px)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bags", nargs="+", metavar="BAG", help="rosbag2 episodes (converted with bags2dataset)")
    source.add_argument("--data", nargs="+", metavar="DIR", help="bags2dataset output directories")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--robot", help="robot config for --bags (default: each bag's metadata)")
    p.add_argument("--dataset-out", help="keep the --bags dataset here (default: a temporary directory)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, help="default 5e-3 (lora) / 5e-4 (full)")
    p.add_argument("--lora-rank", type=int, help="default: the config's lora_rank")
    p.add_argument("--motion-weight", type=float, help="the motion-weighted loss's weight to adapt with "
                   "(default: the checkpoint's motion_loss_weight)")
    _add_guidance_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", help="TensorBoard directory")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a previous Prophet checkpoint")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("eval", help="closed-loop replay fidelity: copy-last-frame baseline and checkpoints")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="bags2dataset output directories")
    p.add_argument("--checkpoint", nargs="*", metavar="CKPT",
                   help="Prophet checkpoints to evaluate: directories or shipped names (e.g. sim_tiny_32px)")
    p.add_argument("--labels", nargs="*", help="one name per checkpoint (default: the directory names)")
    p.add_argument("--out", required=True, help="directory for summary.json, fidelity_*.json and videos/")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--chunks", type=int, default=3, help="action chunks replayed per episode")
    p.add_argument("--num-steps", type=int, help="Euler steps per clip (default: the config's)")
    p.add_argument("--split", choices=("held_out", "all"), default="held_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-videos", action="store_true")
    p.add_argument("--config", default="tiny", help="clip geometry of the baseline when no checkpoint is given")
    p.add_argument("--image-size", type=int, help="baseline image size when no checkpoint is given")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from prophrl_common.cli_errors import run_reporting_errors
    from prophrl_common.devices import device_option_ok

    args = build_parser().parse_args(argv)
    return run_reporting_errors(f"prophrl worldmodel {args.verb}", lambda: device_option_ok(args) and args.func(args))



if __name__ == "__main__":
    sys.exit(main())
