"""How long drawing one Prophet training batch takes on the CPU, with each clip's action frames rendered anew and
with the rendered frames a ClipSampler keeps (prophrl_worldmodel.clips.ACTION_FRAME_CACHE_BYTES).

On a GPU, pretraining waits for these batches: on an H200 a batch-128 step of tiny_32px_start_frame took 0.14 s,
nearly all of it drawing the batch. Prints ms per batch both ways and their ratio, measured in one run:

    python bench/clip_sampling.py --data data/worldmodel_corpus_shipped/pretrain/* [--batch 128] [--config ...]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import statistics
import time

import numpy as np


def ms_per_batch(sampler, batch: int, repeats: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.random_batch(batch, rng)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    from prophrl_common.tables import format_table
    from prophrl_worldmodel.clips import ClipSampler, load_episodes
    from prophrl_worldmodel.configuration_prophet import get_prophet_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="bags2dataset output directories")
    parser.add_argument("--config", default="tiny_32px_start_frame")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    config = get_prophet_config(args.config)
    episodes = load_episodes(args.data, config.image_size, show_progress=True)
    rendered = ClipSampler(episodes, config, action_frame_cache_bytes=0)
    kept = ClipSampler(episodes, config)
    for index in range(len(kept)):       # every clip drawn once: what a long pretraining reaches after an epoch
        kept.sample(index)
    fresh_ms = ms_per_batch(rendered, args.batch, args.repeats, seed=1)
    kept_ms = ms_per_batch(kept, args.batch, args.repeats, seed=1)
    rows = [["rendered anew", f"{fresh_ms:.1f}", "1.00"], ["kept", f"{kept_ms:.1f}", f"{fresh_ms / kept_ms:.1f}"]]
    print(format_table(f"\none batch of {args.batch} clips ({len(kept)} clips, {args.config}), median of "
                       f"{args.repeats}", ["action frames", "ms per batch", "speed-up"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
