"""Does the reward judge tell a policy's imagined successes from its failures better once it has seen that
policy's own episodes (hard negatives)?

On the outputs of `prophrl demo` (or --policy / --world-model / --data): the SFT policy runs in the physics sim
for two pools of episodes, each labelled by the sim's success: a training pool (seeds from the demo's stage 3b,
prophrl.demo.POLICY_EPISODES_FIRST_SEED) and a held-out pool (seeds from HELD_OUT_FIRST_SEED). For every judge
seed, two judges are trained with the demo's recipe (`prophrl judge train`, 400 steps, 32 px, the demo's Prophet's
replays as imagined clips): one on --data alone, one on --data plus the training pool. Both are scored on the
held-out pool's clips, real and replayed through the Prophet (imagined, the clips RL's reward scores): AUC,
precision and recall at the judge's threshold, and the best precision any threshold reaches at recall >= 0.95
(picked on these clips, so an upper bound). The table gives mean +- std over judge seeds.

    python bench/judge_hard_negatives.py --demo outputs/demo --out outputs/judge_hard_negatives --seeds 2

`--train-episodes 60 300` trains one "with" judge per pool size, on the first N episodes of one collection (how the
judge scales with the policy's own episodes). Resumable: collected episodes and trained judges are reused; a pool's
dataset holds exactly its first N episodes (OUT/policy_train_N). Writes OUT/summary.json.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
from pathlib import Path

import numpy as np

HELD_OUT_FIRST_SEED = 80_000     # above every training seed of the demo and the benches, below the evaluation seeds
WITHOUT = "without the policy's episodes"


def policy_episodes(out: Path, name: str, policy: Path, counts: list[int], first_seed: int, robot: str,
                    task: str) -> dict[int, Path]:
    """max(counts) sim episodes of `policy` from `first_seed` on (as the demo's stage 3b collects them), collected
    once into OUT/NAME_bags; for each N of `counts` a dataset of the first N of them (OUT/NAME_N)."""
    from prophrl.demo import collect_policy_episodes
    from prophrl_data.conversion import bags2dataset
    from prophrl_policy.modeling_vla import VLAPolicy

    datasets = {n: out / f"{name}_{n}" for n in counts}
    if all((d / "index.json").is_file() for d in datasets.values()):
        return datasets
    bags = collect_policy_episodes(policy, robot, task, max(counts), first_seed, out / f"{name}_bags",
                                   VLAPolicy.from_pretrained(policy).config.horizon)
    for n, dataset in datasets.items():
        if not (dataset / "index.json").is_file():
            bags2dataset(bags[:n], dataset, robot, show_progress=True)
    return datasets


def train(out: Path, name: str, data: list[Path], world_model: Path, steps: int, seed: int) -> Path:
    from prophrl_worldmodel.judge_cli import main as judge_main

    path = out / name
    if not (path / "model.safetensors").is_file():
        code = judge_main(["train", "--data", *map(str, data), "--out", str(path), "--steps", str(steps),
                           "--imagined-from", str(world_model), "--image-size", "32", "--seed", str(seed),
                           "--overwrite"])
        if code != 0:
            raise SystemExit(f"training judge {name} failed")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `prophrl demo` output directory")
    parser.add_argument("--policy", type=Path, help="the policy whose episodes are mined (default: the demo's SFT)")
    parser.add_argument("--world-model", type=Path, help="the Prophet (default: the demo's)")
    parser.add_argument("--data", type=Path, nargs="+",
                        help="the judge's other training data (default: the demo's demonstrations and play episodes)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--robot", default="panda_sim")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--train-episodes", type=int, nargs="+", default=[60],
                        help="the policy's episodes a 'with' judge trains on (several sizes: one judge each)")
    parser.add_argument("--held-out-episodes", type=int, default=30, help="the policy's episodes it is scored on")
    parser.add_argument("--seeds", type=int, default=2, help="judge seeds per condition")
    parser.add_argument("--steps", type=int, default=400, help="judge training steps (the demo's)")
    args = parser.parse_args()
    if args.demo is not None:
        args.policy = args.policy or args.demo / "policy_sft"
        args.world_model = args.world_model or args.demo / "prophet"
        args.data = args.data or [args.demo / "dataset", args.demo / "dataset_play"]
    if None in (args.policy, args.world_model, args.data):
        parser.error("give --demo or all of --policy --world-model --data")

    from prophrl.demo import POLICY_EPISODES_FIRST_SEED
    from prophrl_common.tables import format_table
    from prophrl_worldmodel.judge_clips import clips_from_episodes, imagined_clips, load_episodes
    from prophrl_worldmodel.judge_metrics import operating_point
    from prophrl_worldmodel.modeling_judge import load_judge
    from prophrl_worldmodel.modeling_prophet import Prophet

    if min(args.train_episodes) <= 0 or args.held_out_episodes <= 0:
        parser.error("--train-episodes and --held-out-episodes must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    pools = policy_episodes(args.out, "policy_train", args.policy, sorted(set(args.train_episodes)),
                            POLICY_EPISODES_FIRST_SEED, args.robot, args.task)
    held_out = policy_episodes(args.out, "policy_held_out", args.policy, [args.held_out_episodes],
                               HELD_OUT_FIRST_SEED, args.robot, args.task)[args.held_out_episodes]
    judges = {WITHOUT: [train(args.out, f"judge_without_seed{s}", list(args.data), args.world_model, args.steps, s)
                        for s in range(args.seeds)]}
    for n, pool in pools.items():
        judges[f"with {n} of the policy's episodes"] = [
            train(args.out, f"judge_with{n}_seed{s}", [*args.data, pool], args.world_model, args.steps, s)
            for s in range(args.seeds)]

    episodes = load_episodes(held_out)
    clip_sets = {"real": clips_from_episodes(episodes),
                 "imagined": imagined_clips(Prophet.from_pretrained(args.world_model), episodes=episodes, seed=0,
                                            show_progress=True)}
    successes = sum(bool(e.success) for e in episodes)
    print(f"{len(episodes)} held-out episodes of {args.policy} ({successes} successful, {len(clip_sets['real'])} "
          f"clips, {int(clip_sets['real'].labels.sum())} positive); training pools of {sorted(pools)} episodes")
    summary = {"policy": str(args.policy), "world_model": str(args.world_model), "data": list(map(str, args.data)),
               "train_pools": {str(n): str(p) for n, p in pools.items()}, "held_out": str(held_out),
               "held_out_successes": successes,
               "held_out_episodes": len(episodes), "figures": {}}
    rows = []
    keys = ("auc", "precision", "recall", "best_precision_at_recall")
    for condition, paths in judges.items():
        for source, clips in clip_sets.items():
            figures = [operating_point(judge.score(clips.clips, clips.instructions).numpy(), clips.labels,
                                       judge.threshold, 0.95) for judge in map(load_judge, paths)]
            summary["figures"][f"{condition} / {source}"] = figures
            rows.append([condition, source, *(f"{np.mean([f[k] for f in figures]):.3f} +- "
                                               f"{np.std([f[k] for f in figures]):.3f}" for k in keys)])
    # What the end-effector's height alone tells (no image): its rise from the lowest point of the clip to its end.
    by_name = {e.name: e for e in episodes}
    real = clip_sets["real"]
    lift = np.array([by_name[name].ee_pose[len(clip) - 1, 2] - by_name[name].ee_pose[:len(clip), 2].min()
                     for clip, name in zip(real.clips, real.groups)])   # metres, so a score in [0, 1]
    height = operating_point(lift, real.labels, 0.5, 0.95)
    summary["figures"]["end-effector lift, no image / real"] = [height]
    rows.append(["end-effector lift, no image", "real", f"{height['auc']:.3f}", "-", "-",
                 f"{height['best_precision_at_recall']:.3f}"])
    print(format_table(f"\njudge on the held-out clips of the policy's episodes ({args.seeds} judge seeds)",
                       ["judge trained", "clips", "AUC", "precision", "recall", "precision @ recall>=0.95"], rows))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
