"""`prophrl judge train|eval`: train the reward judge (video success classifier) and measure it.

    prophrl judge train --data DIR [DIR ...] --out JUDGE --steps N [--config tiny]
                        [--imagined-from PROPHET [--imagined-episodes K]] [--mined RUN/mined_clips ...] [--log-dir DIR]
    prophrl judge eval --judge JUDGE [JUDGE ...] --data DIR [DIR ...] [--backend auto|classifier|vlm]
                       [--imagined-from PROPHET] [--mined RUN/mined_clips ...] [--chunk N] [--threshold T]
                       [--disagreement W] [--out DIR]

train: clips are cut from the bags2dataset episodes and labelled by the sim's ground truth
(judge_clips module docstring); with --imagined-from, the same episodes are also replayed
through that Prophet and the imagined clips, labelled by the same ground truth, join the
training set (the paper's recipe for domain match); with --mined, so do the clips RL's rollouts were judged on,
labelled by the sim's own success (`prophrl train --sim --mine-clips`: the camera's frames; `prophrl train
--world-model P --replay-in-sim --mine-clips`: Prophet's frames; judge_mined_clips: RL's exploits of a judge, its
hard negatives). The threshold is picked on the validation
split for recall >= --target-recall. Writes the judge (config.json + model.safetensors +
judge_training.json) and JUDGE/summary.json.

eval: accuracy / precision / recall / balanced accuracy / AUC of a judge (or, given several, of their
ensemble: judge_ensemble) on the clips of the given datasets (real, and imagined with --imagined-from) and of
mined RL rollouts (--mined: "rl"; a judge's precision on another run's rollouts),
and per episode, judged after every chunk of N actions as RL and the imagined evaluation judge (judge_episodes:
each judging rule's precision / recall / AUC over the episodes; N is the Prophet's clip with --imagined-from,
else --chunk), printed as tables and written to OUT/summary.json (default JUDGE_eval/summary.json).

Bad input (a missing dataset or checkpoint, a malformed config) is one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from prophrl_common.atomic_io import write_json_atomic
from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import OutputKind, check_run_dir
from prophrl_common.tables import format_table as _format_table
from prophrl_worldmodel.judge_ensemble import DEFAULT_DISAGREEMENT
from prophrl_worldmodel.configuration_judge import THRESHOLD_SOURCES



def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    return _format_table(title, header, rows, float_format=".3f")
METRIC_COLUMNS = ("accuracy", "precision", "recall", "balanced_accuracy", "auc")


def metrics_rows(metrics: dict[str, dict]) -> list[list]:
    return [[name, m["clips"], m["positives"], m["negatives"], m["threshold"], *(m[k] for k in METRIC_COLUMNS)]
            for name, m in metrics.items()]


METRICS_HEADER = ["clips of", "clips", "success", "failure", "threshold", "accuracy", "precision", "recall",
                  "bal. acc", "AUC"]
EPISODE_HEADER = ["frames", "judged", "episodes", "success", "precision", "recall", "failures judged success",
                  "AUC", "best precision at recall 0.95"]


def episode_rows(per_episode: dict[str, dict[str, dict]]) -> list[list]:
    rows = []
    for source, by_rule in per_episode.items():
        for judging, m in by_rule.items():
            false_positive_rate = m["fp"] / (m["fp"] + m["tn"]) if m["fp"] + m["tn"] else float("nan")
            rows.append([source, judging.replace("_", " "), m["episodes"], m["successes"], m["precision"],
                         m["recall"], false_positive_rate, m["auc"], m["best_precision_at_recall"]])
    return rows




# What `prophrl judge eval --out` writes; it is rewritten in place, never into another kind of directory.
JUDGE_EVAL_OUTPUT = OutputKind("judge evaluation", frozenset({"summary.json"}))


def _check_datasets(dirs: Sequence[str]) -> None:
    for d in dirs:
        if not (Path(d) / "index.json").is_file():
            raise ConfigError(f"{d}: not a bags2dataset output (no index.json)")


def _clip_settings(args):
    from prophrl_worldmodel.judge_clips import ClipSettings

    return ClipSettings(positive_tail_frames=args.positive_tail, negative_margin_frames=args.negative_margin,
                        seed=args.seed).validate()


def _imagined_videos(args, episodes):
    """-> (the --imagined-from Prophet, its replays of the first --imagined-episodes episodes, the Euler steps per
    Prophet clip they were sampled with)."""
    from prophrl_worldmodel.judge_clips import imagined_videos
    from prophrl_worldmodel.modeling_prophet import Prophet

    prophet = Prophet.from_pretrained(args.imagined_from, map_location=args.device)
    steps = prophet.sampling_steps(args.num_steps)
    videos = imagined_videos(prophet, episodes[:args.imagined_episodes], num_steps=steps, seed=args.seed,
                             show_progress=True)
    return prophet, videos, steps


def _imagined(args, episodes, settings):
    """-> (the --imagined-from Prophet, its replays of the episodes, their labelled imagined clips, the Euler steps
    per Prophet clip they were sampled with)."""
    from prophrl_worldmodel.judge_clips import imagined_clips

    prophet, videos, steps = _imagined_videos(args, episodes)
    clips = imagined_clips(prophet, settings=settings, episodes=episodes[:len(videos)], videos=videos)
    return prophet, videos, clips, steps


def _mined(args):
    """The --mined directories' clips (source "rl"), or an empty ClipSet."""
    from prophrl_worldmodel.judge_clips import ClipSet
    from prophrl_worldmodel.judge_mined_clips import load_mined_clips

    return load_mined_clips(args.mined) if args.mined else ClipSet([], [], [], [], [])


def _cmd_train(args: argparse.Namespace) -> int:
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_common.outputs import check_output_dir
    from prophrl_worldmodel.judge_clips import clips_from_episodes, load_episodes
    from prophrl_worldmodel.judge_training import JUDGE_OUTPUT, JUDGE_SUMMARY, JudgeTrainConfig, train_judge

    _check_datasets(args.data)
    check_output_dir(args.out, JUDGE_OUTPUT, overwrite=args.overwrite,
                     inputs=[*args.data, args.imagined_from, *args.mined])
    overrides = {"image_size": args.image_size} if args.image_size else {}
    if args.num_frames:
        overrides["num_frames"] = args.num_frames
    config = get_judge_config(args.config, **overrides)
    train_config = JudgeTrainConfig(batch_size=args.batch_size, learning_rate=args.lr, val_fraction=args.val_fraction,
                                    target_recall=args.target_recall, threshold_on=args.threshold_on,
                                    seed=args.seed).validate()
    if args.threshold_on == "imagined" and not args.imagined_from:
        raise ConfigError("--threshold-on imagined needs --imagined-from (there are no imagined clips without it)")
    if args.threshold_on == "rl" and not args.mined:
        raise ConfigError("--threshold-on rl needs --mined (there are no clips of RL's rollouts without it)")
    settings = _clip_settings(args)
    episodes = load_episodes(args.data)
    clips = clips_from_episodes(episodes, settings)
    imagined_steps = None
    if args.imagined_from:
        _, _, imagined, imagined_steps = _imagined(args, episodes, settings)
        clips = clips + imagined
    clips = clips + _mined(args)
    print(f"judge training on {clips.counts()} from {len(args.data)} dataset(s); config {config.name}")
    out = Path(args.out)
    result = train_judge(clips.clips, clips.labels, clips.instructions, config, out, args.steps, groups=clips.groups,
                         sources=clips.sources, train_config=train_config, overwrite=args.overwrite, device=args.device,
                         log_dir=args.log_dir or out.with_name(out.name + "_tensorboard"))
    summary = {"judge": str(result.path), "config": dataclasses.asdict(config) | {"threshold": result.threshold},
               "datasets": [str(d) for d in args.data], "imagined_from": args.imagined_from,
               "imagined_num_steps": imagined_steps, "mined": [str(d) for d in args.mined], "clips": clips.counts(),
               "train_set": result.train_counts,
               "val_set": result.val_counts,
               "threshold": result.threshold, "target_recall": train_config.target_recall, "val_auc": result.val_auc,
               "val_metrics": result.val_metrics.as_dict() if result.val_metrics else None,
               "threshold_on": train_config.threshold_on, "val_by_source": result.val_by_source,
               "final_train_loss": sum(result.losses[-50:]) / len(result.losses[-50:]), "seconds": result.seconds}
    write_json_atomic(result.path / JUDGE_SUMMARY, summary)
    rows = [["steps", args.steps], ["train clips (success / failure)",
                                    f"{result.train_counts['positives']} / {result.train_counts['negatives']}"],
            ["validation clips (success / failure)",
             f"{result.val_counts['positives']} / {result.val_counts['negatives']}"],
            ["final train loss", summary["final_train_loss"]], ["threshold", result.threshold],
            ["validation AUC", result.val_auc]]
    if result.val_metrics:
        rows += [[f"validation {k}", getattr(result.val_metrics, k)] for k in METRIC_COLUMNS[:-1]]
    if len(result.val_by_source) > 1:
        for source, m in result.val_by_source.items():
            rows += [[f"validation {source}: AUC / precision / recall", f"{m['auc']:.3f} / {m['precision']:.3f} / "
                      f"{m['recall']:.3f}"]]
    rows.append(["seconds", result.seconds])
    on = "" if train_config.threshold_on == "all" else f" on its {train_config.threshold_on} clips"
    print(format_table(f"\nreward judge saved to {result.path} (threshold for validation recall >= "
                       f"{train_config.target_recall}{on})", ["metric", "value"], rows))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from prophrl_worldmodel.judge_clips import clips_from_episodes, load_episodes
    from prophrl_worldmodel.judge_ensemble import JudgeEnsemble, load_judges
    from prophrl_worldmodel.judge_metrics import evaluate_judge

    _check_datasets(args.data)
    if len(args.judge) > 1 and not args.out:
        raise ConfigError("several judges (an ensemble) need --out for the evaluation")
    out = Path(args.out) if args.out else Path(str(Path(args.judge[0])) + "_eval")
    check_run_dir(out, JUDGE_EVAL_OUTPUT, inputs=[*args.data, *args.judge, args.imagined_from, *args.mined])
    judge = load_judges(args.judge, backend=args.backend, device=args.device, disagreement=args.disagreement)
    name = judge.describe() if isinstance(judge, JudgeEnsemble) else f"{args.judge[0]} ({judge.config.backend})"
    settings = _clip_settings(args)
    episodes = load_episodes(args.data)
    clips = clips_from_episodes(episodes, settings)
    imagined_steps, prophet, videos = None, None, None
    if args.imagined_from:
        prophet, videos, imagined, imagined_steps = _imagined(args, episodes, settings)
        clips = clips + imagined
    clips = clips + _mined(args)
    chunk = _episode_chunk(args, prophet)
    threshold = judge.threshold if args.threshold is None else args.threshold
    metrics = evaluate_judge(judge, clips, threshold)
    per_episode = {}
    if chunk is not None:
        per_episode["real"] = _per_episode(judge, [ep.frames for ep in episodes], episodes, chunk, threshold)
    if videos is not None:
        per_episode["imagined"] = _per_episode(judge, videos, episodes, prophet.config.frames_per_clip, threshold)
    backend = "ensemble" if isinstance(judge, JudgeEnsemble) else judge.config.backend
    write_json_atomic(out / "summary.json", {"judge": args.judge if len(args.judge) > 1 else args.judge[0],
                                             "backend": backend,
                                             "datasets": [str(d) for d in args.data],
                                             "imagined_from": args.imagined_from,
                                             "imagined_num_steps": imagined_steps,
                                             "mined": [str(d) for d in args.mined], "threshold": threshold,
                                             "clip_settings": dataclasses.asdict(settings), "metrics": metrics,
                                             "chunk_actions": chunk, "per_episode": per_episode})
    print(format_table(f"\nreward judge {name} on {len(episodes)} episode(s)",
                       METRICS_HEADER, metrics_rows(metrics)))
    if per_episode:
        print(format_table(f"\nper episode, judged after every chunk of {chunk} actions (threshold {threshold:.3f})",
                           EPISODE_HEADER, episode_rows(per_episode)))
    else:
        print("\n(no per-episode figures: give --chunk, the actions per policy chunk, or --imagined-from)")
    print(f"\nwrote {out / 'summary.json'}")
    return 0


def _episode_chunk(args, prophet) -> int | None:
    """Actions per judged chunk: --chunk, which must be the Prophet's clip when there is one, else that clip."""
    if args.chunk is not None and args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk}")
    if prophet is None:
        return args.chunk
    clip = prophet.config.action_horizon
    if args.chunk is not None and args.chunk != clip:
        raise ConfigError(f"--chunk {args.chunk}: the --imagined-from Prophet imagines {clip} actions per clip, "
                          f"and its replays are judged after each clip")
    return clip


def _per_episode(judge, videos, episodes, frames_per_chunk: int, threshold: float) -> dict:
    from prophrl_worldmodel.judge_episodes import episode_metrics, episode_scores

    episodes = episodes[:len(videos)]
    scores = episode_scores(judge, videos, [ep.instruction for ep in episodes], frames_per_chunk)
    return episode_metrics(scores, [bool(ep.success) for ep in episodes], threshold)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prophrl judge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    def common(p):
        p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="bags2dataset output directories")
        p.add_argument("--imagined-from", metavar="PROPHET",
                       help="also replay the episodes through this Prophet checkpoint (imagined clips)")
        p.add_argument("--mined", nargs="+", default=[], metavar="DIR",
                       help="also the clips RL's rollouts were judged on, labelled by the sim (`prophrl train "
                            "--sim ... --mine-clips` or `--replay-in-sim ... --mine-clips`: RUN/mined_clips)")
        p.add_argument("--imagined-episodes", type=int, help="replay at most this many episodes (default all)")
        p.add_argument("--num-steps", type=int, help="Prophet sampling steps (default: its config's)")
        p.add_argument("--positive-tail", type=int, default=3,
                       help="success clips end at one of the last N frames of a successful episode")
        p.add_argument("--negative-margin", type=int, default=10,
                       help="not-yet-successful prefixes end at least N frames before the success frame")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")

    p = sub.add_parser("train", help="train the video success classifier")
    common(p)
    p.add_argument("--out", required=True, help="judge directory to write")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--config", default="tiny", help="named judge config (default tiny)")
    p.add_argument("--image-size", type=int, help="override the config's image size")
    p.add_argument("--num-frames", type=int, help="override the config's frames per clip")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-fraction", type=float, default=0.25, help="episodes held out for validation")
    p.add_argument("--target-recall", type=float, default=0.9, help="validation recall the threshold must keep")
    p.add_argument("--threshold-on", choices=THRESHOLD_SOURCES, default="all",
                   help="validation clips the threshold is picked on: all, or only the real / the imagined ones "
                        "(those RL's reward scores in Prophet) / the mined RL rollouts' (--mined)")
    p.add_argument("--log-dir", help="TensorBoard directory (default OUT_tensorboard)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a previous judge")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy / precision / recall of a judge on labelled clips")
    common(p)
    p.add_argument("--judge", required=True, nargs="+", metavar="JUDGE",
                   help="a judge directory (or, with --backend vlm, a VLM directory); several: their ensemble "
                        "(prophrl_worldmodel.judge_ensemble)")
    p.add_argument("--disagreement", type=float, default=DEFAULT_DISAGREEMENT,
                   help="ensemble score = mean probability - this x the judges' standard deviation")
    p.add_argument("--backend", default="auto", choices=("auto", "classifier", "vlm"))
    p.add_argument("--threshold", type=float, help="override the judge's threshold")
    p.add_argument("--chunk", type=int, metavar="N",
                   help="actions per policy chunk: per-episode figures judge the clip so far after each chunk "
                        "(default: the --imagined-from Prophet's clip)")
    p.add_argument("--out", help="directory for summary.json (default JUDGE_eval)")
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from prophrl_common.cli_errors import run_reporting_errors
    from prophrl_common.devices import device_option_ok

    args = build_parser().parse_args(argv)
    return run_reporting_errors(f"prophrl judge {args.verb}", lambda: device_option_ok(args) and args.func(args),
                                also=(ValueError,))



if __name__ == "__main__":
    sys.exit(main())
