"""Reward-judge accuracy: precision / recall / accuracy on held-out real (and Prophet-imagined) lift clips.

    python bench/judge_accuracy.py --episodes-per-skill 12 --steps 600
    python bench/judge_accuracy.py --prophet CKPT             # also imagined clips from that Prophet
    python bench/judge_accuracy.py --train-prophet 600        # train a tiny Prophet on the training episodes first

Collects scripted Panda lift episodes with expert skill 1 / 0.5 / 0 (deliberate grasp mistakes, retries,
some episodes run out of steps), holds out every --held-out-every-th episode, cuts and labels clips by
the sim's ground truth (prophrl_worldmodel.judge_clips), trains the judge on the rest (its threshold
picked on a validation split for high recall) and reports, on the held-out episodes, the metrics at
the judge's threshold and at 0.5. With a Prophet, the held-out episodes are also replayed through it
(imagined clips with the same labels), and a second judge is trained on real + imagined training
clips (the paper's domain-match recipe). Everything lives under --work and is reused on a second run
(bags, dataset, Prophet); the judges are retrained. Writes WORK/summary.json.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import os
import time
from pathlib import Path

import torch

from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_worldmodel.configuration_judge import get_judge_config
from prophrl_data.conversion import bags2dataset
from prophrl_worldmodel.judge_cli import format_table
from prophrl_worldmodel.judge_clips import ClipSettings, clips_from_episodes, imagined_clips, load_episodes
from prophrl_worldmodel.judge_metrics import evaluate_judge
from prophrl_worldmodel.judge_training import JudgeTrainConfig, train_judge
from prophrl_worldmodel.modeling_judge import RewardJudge

SKILLS = (1.0, 0.5, 0.0)


def collect(work: Path, per_skill: int, max_steps: int, image_size: int) -> Path:
    dataset = work / "dataset"
    if (dataset / "index.json").is_file():
        return dataset
    bags = work / "bags"
    for i, skill in enumerate(SKILLS):
        out = bags / f"skill{skill:g}"
        have = len([p for p in out.iterdir() if p.is_dir()]) if out.is_dir() else 0
        if have < per_skill:
            collect_direct(CollectSettings(episodes=per_skill - have, first_seed=i * 1000 + have, max_steps=max_steps,
                                           image_size=image_size, noise_std=0.002, skill=skill), out)
    bags2dataset([bags / f"skill{s:g}" for s in SKILLS], dataset, "panda_sim", show_progress=True)
    return dataset


def train_prophet(work: Path, train_dataset_dirs, steps: int, image_size: int) -> Path:
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.training import pretrain

    out = work / f"prophet_{image_size}px_{steps}steps"
    if not (out / "model.safetensors").is_file():
        pretrain(train_dataset_dirs, get_prophet_config("tiny", image_size=image_size), out,
                 vae_steps=max(100, steps // 3), steps=steps, log_dir=work / "tensorboard" / out.name)
    return out


def split_dataset(work: Path, dataset: Path, every: int) -> tuple[Path, list[int]]:
    """A bags2dataset-style directory holding only the training episodes (for Prophet pretraining)."""
    index = json.loads((dataset / "index.json").read_text())
    train_ids = [i for i in range(len(index["episodes"])) if i % every != 0]
    out = work / "dataset_train_only"
    if not (out / "index.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / "shards").mkdir(exist_ok=True)
        for i in train_ids:
            shard = index["episodes"][i]["shard"]
            target = out / shard
            if not target.exists():
                os.symlink((dataset / shard).resolve(), target)
        (out / "index.json").write_text(json.dumps({**index, "episodes": [index["episodes"][i] for i in train_ids],
                                                    "num_samples": sum(index["episodes"][i]["num_samples"]
                                                                       for i in train_ids)}, indent=2))
    return out, train_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes-per-skill", type=int, default=12)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64, help="sim camera resolution")
    parser.add_argument("--held-out-every", type=int, default=3, help="every N-th episode is held out")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--judge-image-size", type=int, help="override the judge config's image size")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target-recall", type=float, default=0.9)
    parser.add_argument("--prophet", help="Prophet checkpoint for imagined clips")
    parser.add_argument("--train-prophet", type=int, default=0,
                        help="train a tiny Prophet for this many denoiser steps on the training episodes")
    parser.add_argument("--prophet-image-size", type=int, default=32)
    parser.add_argument("--num-steps", type=int, help="Prophet sampling steps (default: its config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="outputs/judge_accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.work)
    dataset = collect(work, args.episodes_per_skill, args.max_steps, args.image_size)
    episodes = load_episodes(dataset)
    train_eps = [e for i, e in enumerate(episodes) if i % args.held_out_every != 0]
    test_eps = [e for i, e in enumerate(episodes) if i % args.held_out_every == 0]
    settings = ClipSettings(seed=args.seed)
    train_real, test_real = clips_from_episodes(train_eps, settings), clips_from_episodes(test_eps, settings)
    print(f"{len(episodes)} episodes ({sum(e.success for e in episodes)} successful); train clips "
          f"{train_real.counts()}, held-out clips {test_real.counts()}")

    prophet_path = args.prophet
    if args.train_prophet and not prophet_path:
        train_only, _ = split_dataset(work, dataset, args.held_out_every)
        prophet_path = str(train_prophet(work, [train_only], args.train_prophet, args.prophet_image_size))
    imagined_train = imagined_test = None
    if prophet_path:
        from prophrl_worldmodel.modeling_prophet import Prophet

        prophet = Prophet.from_pretrained(prophet_path)
        start = time.time()
        imagined_test = imagined_clips(prophet, settings=settings, episodes=test_eps, num_steps=args.num_steps,
                                       seed=args.seed, show_progress=True)
        imagined_train = imagined_clips(prophet, settings=settings, episodes=train_eps, num_steps=args.num_steps,
                                        seed=args.seed + 1, show_progress=True)
        print(f"imagined {len(train_eps) + len(test_eps)} episodes in {time.time() - start:.0f} s with {prophet_path}")

    overrides = {"image_size": args.judge_image_size} if args.judge_image_size else {}
    config = get_judge_config(args.config, **overrides)
    train_config = JudgeTrainConfig(batch_size=args.batch_size, target_recall=args.target_recall, seed=args.seed)
    variants = [("real", train_real)]
    if imagined_train is not None:
        variants.append(("real+imagined", train_real + imagined_train))
    test = test_real + imagined_test if imagined_test is not None else test_real
    rows, summary = [], {"episodes": len(episodes), "held_out_episodes": len(test_eps), "prophet": prophet_path,
                         "judge_config": config.name, "steps": args.steps, "judges": {}}
    for name, clips in variants:
        out = work / f"judge_{name.replace('+', '_')}"
        result = train_judge(clips.clips, clips.labels, clips.instructions, config, out, args.steps,
                             groups=clips.groups, train_config=train_config, log_dir=work / "tensorboard" / out.name)
        judge = RewardJudge.from_pretrained(result.path)
        at_threshold = evaluate_judge(judge, test)
        at_half = evaluate_judge(judge, test, threshold=0.5)
        summary["judges"][name] = {"path": str(result.path), "threshold": result.threshold, "val_auc": result.val_auc,
                                   "train_seconds": result.seconds, "held_out": at_threshold,
                                   "held_out_at_0.5": at_half}
        for source, metrics in at_threshold.items():
            if source == "all" and len(at_threshold) == 2:
                continue  # one source only: "all" repeats it
            for label, m in (("judge's", metrics), ("0.5", at_half[source])):
                rows.append([name, source, m["clips"], m["positives"], label, m["threshold"], m["accuracy"],
                             m["precision"], m["recall"], m["balanced_accuracy"], m["auc"]])
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(f"\nreward judge on {len(test_eps)} held-out episodes ({config.name} judge, {args.steps} steps)",
                       ["trained on", "eval clips", "n", "success", "threshold rule", "threshold", "accuracy",
                        "precision", "recall", "bal. acc", "AUC"], rows))
    print(f"\nwrote {work / 'summary.json'}")


if __name__ == "__main__":
    main()
