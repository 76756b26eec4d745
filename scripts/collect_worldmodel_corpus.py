#!/usr/bin/env python3
"""Regenerate the Prophet pretraining corpus in the physics sim, and a held-out combination for adaptation.

Every (robot, task, camera view) combination gets `--episodes` scripted-expert episodes
(prophrl_trainer.collect.collect_direct, one rosbag2 bag each, /camera/pose + /camera/camera_info
recorded so bags2dataset stores the calibration for action frames); a `--noisy-fraction` of them
run the expert with action noise and deliberate grasp mistakes (recoveries) for diversity, and
every episode's camera is jittered by up to `--camera-jitter-m`. Each combination is converted with
bags2dataset into its own dataset directory.

One combination (default ur5e_sim/door/frontview: a robot, task and view that each occur in the
pretraining corpus, but never together) is held out of pretraining: it is written to OUT/heldout/
with `--held-out-episodes` episodes, for the few-shot adaptation study (bench/prophet_fidelity.py).

Layout::

    OUT/bags/<robot>_<task>_<view>/...        rosbag2 episodes
    OUT/pretrain/<robot>_<task>_<view>/       bags2dataset output (index.json + shards/)
    OUT/heldout/<robot>_<task>_<view>/        the held-out combination's dataset
    OUT/corpus.json                           what was collected (machine-readable)

Usage::

    python scripts/collect_worldmodel_corpus.py --out data/worldmodel_corpus --episodes 20
    python scripts/collect_worldmodel_corpus.py --out /tmp/c --episodes 2 --held-out-episodes 4 \
        --robots panda_sim ur5e_sim --tasks lift door --views frontview sideview   # a small one

Existing dataset directories are kept (the run resumes) unless --overwrite is given.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROBOTS = ("panda_sim", "ur5e_sim")
TASKS = ("lift", "stack", "door")
VIEWS = ("frontview", "sideview")
HELD_OUT = "ur5e_sim/door/frontview"
HELD_OUT_FIRST_SEED = 100_000   # held-out seeds never overlap the pretraining seeds
SEEDS_PER_COMBINATION = 1_000


def combination_name(robot: str, task: str, view: str) -> str:
    return f"{robot}_{task}_{view}"


def parse_combination(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected ROBOT/TASK/VIEW, got {text!r}")
    return parts[0], parts[1], parts[2]


def collect_combination(robot: str, task: str, view: str, episodes: int, first_seed: int, bags_dir: Path,
                        dataset_dir: Path, *, image_size: int, max_steps: int, noisy_fraction: float,
                        noise_std: float, noisy_skill: float, camera_jitter_m: float, overwrite: bool) -> dict:
    """Collect `episodes` episodes of one combination and convert them; returns a summary row."""
    from prophrl_trainer.collect import CollectSettings, collect_direct
    from prophrl_data.conversion import bags2dataset

    name = combination_name(robot, task, view)
    row = {"combination": name, "robot": robot, "task": task, "view": view, "dataset": str(dataset_dir)}
    if dataset_dir.exists() and not overwrite:
        index = json.loads((dataset_dir / "index.json").read_text())
        return {**row, "status": "kept", "episodes": len(index["episodes"]),
                "successes": sum(e["success"] for e in index["episodes"]), "samples": index["num_samples"],
                "noisy": None, "seconds": 0.0}
    start = time.perf_counter()
    if bags_dir.exists():
        shutil.rmtree(bags_dir)
    noisy = min(episodes, math.ceil(noisy_fraction * episodes)) if noise_std > 0 or noisy_skill < 1 else 0
    batches = [(episodes - noisy, first_seed, 0.0, 1.0), (noisy, first_seed + episodes - noisy, noise_std, noisy_skill)]
    results = []
    for count, seed, std, skill in batches:
        if count:
            settings = CollectSettings(robot=robot, task=task, episodes=count, first_seed=seed, max_steps=max_steps,
                                       noise_std=std, skill=skill, camera=view, image_size=image_size,
                                       camera_jitter_m=camera_jitter_m)
            results += collect_direct(settings, bags_dir)
    summary = bags2dataset([bags_dir], dataset_dir, robot, overwrite=True, show_progress=False)
    return {**row, "status": "collected", "episodes": summary.episodes,
            "successes": sum(r["success"] for r in results), "samples": summary.samples, "noisy": noisy,
            "seconds": time.perf_counter() - start}


def collect_corpus(out: str | Path, episodes: int, held_out_episodes: int, *, robots=ROBOTS, tasks=TASKS,
                   views=VIEWS, held_out: tuple[str, str, str] = parse_combination(HELD_OUT), image_size: int = 64,
                   max_steps: int = 300, noisy_fraction: float = 0.3, noise_std: float = 0.005,
                   noisy_skill: float = 0.7, camera_jitter_m: float = 0.02, overwrite: bool = False,
                   jobs: int = 1) -> dict:
    """Collect every combination (the held-out one separately), `jobs` combinations at a time in worker
    processes; writes and returns OUT/corpus.json's content. A combination's seeds depend only on its place in
    the list of combinations, so the corpus is the same for any number of jobs."""
    out = Path(out)
    combinations = [c for c in itertools.product(robots, tasks, views) if c != tuple(held_out)]
    if not combinations:
        raise ValueError("no pretraining combination left after holding one out")
    if episodes <= 0 or held_out_episodes < 0:
        raise ValueError("--episodes must be positive and --held-out-episodes >= 0")
    if jobs <= 0:
        raise ValueError("--jobs must be positive")
    common = dict(image_size=image_size, max_steps=max_steps, noisy_fraction=noisy_fraction, noise_std=noise_std,
                  noisy_skill=noisy_skill, camera_jitter_m=camera_jitter_m, overwrite=overwrite)
    work = [("pretrain", (robot, task, view), episodes, number * SEEDS_PER_COMBINATION)
            for number, (robot, task, view) in enumerate(combinations)]
    if held_out_episodes:
        work.append(("heldout", tuple(held_out), held_out_episodes, HELD_OUT_FIRST_SEED))
    calls = [(*combination, count, first_seed, out / "bags" / combination_name(*combination),
              out / split / combination_name(*combination)) for split, combination, count, first_seed in work]
    if jobs == 1:
        results = [collect_combination(*args, **common) for args in calls]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(collect_combination, *args, **common) for args in calls]
            results = [future.result() for future in futures]
    rows = [{"split": item[0], **result} for item, result in zip(work, results)]
    manifest = {"format": "prophrl-worldmodel-corpus-v1", "held_out": "/".join(held_out),
                "pretrain_datasets": [r["dataset"] for r in rows if r["split"] == "pretrain"],
                "heldout_datasets": [r["dataset"] for r in rows if r["split"] == "heldout"],
                "settings": {"episodes": episodes, "held_out_episodes": held_out_episodes, **common},
                "combinations": rows}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def format_rows(rows: list[dict]) -> str:
    header = ["split", "combination", "episodes", "noisy", "successes", "samples", "status", "seconds"]
    cells = [[str(r["split"]), r["combination"], str(r["episodes"]), "-" if r["noisy"] is None else str(r["noisy"]),
              f"{r['successes']}/{r['episodes']}", str(r["samples"]), r["status"], f"{r['seconds']:.1f}"]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=20, help="episodes per pretraining combination")
    parser.add_argument("--held-out-episodes", type=int, default=50, help="episodes of the held-out combination")
    parser.add_argument("--held-out", type=parse_combination, default=parse_combination(HELD_OUT),
                        metavar="ROBOT/TASK/VIEW")
    parser.add_argument("--robots", nargs="+", default=list(ROBOTS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--views", nargs="+", default=list(VIEWS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--noisy-fraction", type=float, default=0.3, help="share of episodes with a noisy expert")
    parser.add_argument("--noise-std", type=float, default=0.005, help="noisy expert: action noise (m, rad per step)")
    parser.add_argument("--noisy-skill", type=float, default=0.7, help="noisy expert: 1 - P(deliberate grasp mistake)")
    parser.add_argument("--camera-jitter-m", type=float, default=0.02, help="per-episode camera position jitter")
    parser.add_argument("--overwrite", action="store_true", help="recollect combinations whose dataset exists")
    parser.add_argument("--jobs", type=int, default=1, help="combinations collected at a time (worker processes)")
    args = parser.parse_args(argv)
    from prophrl_common.bag_error import BagError
    from prophrl_common.config_io import ConfigError

    begin = time.perf_counter()
    try:
        manifest = collect_corpus(args.out, args.episodes, args.held_out_episodes, robots=args.robots,
                                  tasks=args.tasks, views=args.views, held_out=args.held_out,
                                  image_size=args.image_size, max_steps=args.max_steps,
                                  noisy_fraction=args.noisy_fraction, noise_std=args.noise_std,
                                  noisy_skill=args.noisy_skill, camera_jitter_m=args.camera_jitter_m,
                                  overwrite=args.overwrite, jobs=args.jobs)
    except (BagError, ConfigError, ValueError) as exc:
        print(f"collect_worldmodel_corpus: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nworld-model corpus in {args.out} (held out: {manifest['held_out']}), "
          f"{time.perf_counter() - begin:.0f} s")
    print(format_rows(manifest["combinations"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
