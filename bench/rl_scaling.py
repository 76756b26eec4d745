"""What RL in imagination costs as the work grows: time and peak memory of one update's imagination and
of its policy update, against group size G, initial states per update, chunks per rollout, the world
model's image size and its Euler steps per imagined clip, one factor at a time around the demo's recipe.

The base cell is `prophrl demo`'s stage 6 on the Panda lift: Prophet `tiny_32px_start_frame` (2 frames x 5 actions
per clip, one Euler step per clip, its own), policy `tiny` (96 px input, horizon 10, K = 10 SDE steps), judge `tiny`
at the world model's image size, and DEMO_RL_CONFIG with that demo's 6 chunks per rollout (G = 8, 2 states, the KL
anchor's reference policy in the update, no early termination, so every rollout runs all its chunks and the cost
does not depend on what the judge says). Weights are random: the cost does not depend on them.
A cell varies one factor; the image size changes the world model's and the judge's frames (the policy
resizes every frame to its own input).

Each cell runs in a fresh process (`--cell`), so its memory is its own: after a warm-up rollout it times
`Trainer.collect_rollouts()` (states x G rollouts imagined, judged) and then `Trainer.learn()` (the
FA-GRPO + FlowScale epochs on them). Peak memory is the process's peak resident set (Linux VmHWM, reset
before each phase through /proc/self/clear_refs); "growth" is that peak minus the resident set when the
phase started (models, optimizer, the warm-up's allocations and, for the update, the imagined batch are
already there), which is what a larger cell adds.

    python bench/rl_scaling.py [--threads 1] [--group 4 8 16 32] [--states 1 2 4] [--chunks 2 4 6 12]
                               [--image-size 32 64 128] [--imagination-steps 10 3 1] [--out results.json]
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from prophrl_common.tables import print_table

BASE = {"group_size": 8, "states_per_update": 2, "chunks_per_rollout": 6, "image_size": 32, "imagination_steps": 1}
FACTORS = {"group": "group_size", "states": "states_per_update", "chunks": "chunks_per_rollout",
           "image_size": "image_size", "imagination_steps": "imagination_steps"}
MIB = 1024 * 1024


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak resident set of this process during a `with` block (Linux: VmHWM after a reset of it)."""

    def __enter__(self) -> "PeakMemory":
        Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current resident set
        self.start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak = _status_bytes("VmHWM")


def run_cell(cell: dict, threads: int) -> dict:
    """One cell in this process: build the setup, warm up, time and measure imagination and the update."""
    import torch

    from prophrl.demo import DEMO_PROPHET_CONFIG, DEMO_RL_CONFIG
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.rl_smoke import smoke_norm_stats, write_smoke_dataset
    from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_judge import RewardJudge
    from prophrl_worldmodel.modeling_prophet import Prophet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="rl_scaling-"))
    size = cell["image_size"]
    prophet = Prophet(get_prophet_config(DEMO_PROPHET_CONFIG, image_size=size))
    prophet.eval().save_pretrained(root / "prophet")
    policy_config = get_vla_config("tiny", horizon=prophet.config.action_horizon)
    VLAPolicy(policy_config, smoke_norm_stats()).save_pretrained(root / "policy")
    RewardJudge(get_judge_config("tiny", image_size=size)).save_pretrained(root / "judge")
    write_smoke_dataset(root / "data", episodes=4, size=size)
    config = {**DEMO_RL_CONFIG, "group_size": cell["group_size"], "states_per_update": cell["states_per_update"],
              "chunks_per_rollout": cell["chunks_per_rollout"], "imagination_steps": cell["imagination_steps"]}
    (root / "rl.json").write_text(json.dumps(config))
    trainer, _ = build_trainer(TrainSettings.from_args(build_parser().parse_args([
        "--policy", str(root / "policy"), "--world-model", str(root / "prophet"), "--judge", str(root / "judge"),
        "--data", str(root / "data"), "--out", str(root / "run"), "--updates", "1", "--config", str(root / "rl.json"),
        "--threads", str(threads), "--no-progress"])), show_progress=False)

    warm = trainer.sampler.sample(1)   # first calls allocate and pick kernels: keep them out of the figures
    trainer.learn(trainer.imagine(warm, [0], 2, "sde", trainer.generator))

    with PeakMemory() as imagination_memory:
        begin = time.perf_counter()
        imagined = trainer.collect_rollouts()
        imagine_s = time.perf_counter() - begin
    with PeakMemory() as update_memory:
        begin = time.perf_counter()
        trainer.learn(imagined)
        update_s = time.perf_counter() - begin
    rollouts = cell["states_per_update"] * cell["group_size"]
    return {**cell, "rollouts": rollouts, "chunks_in_batch": int(imagined.mask.sum()),
            "imagine_s": imagine_s, **{k: float(v) for k, v in imagined.timings.items()},
            "imagine_peak_mib": imagination_memory.peak / MIB,
            "imagine_growth_mib": (imagination_memory.peak - imagination_memory.start) / MIB,
            "update_s": update_s, "update_peak_mib": update_memory.peak / MIB,
            "update_growth_mib": (update_memory.peak - update_memory.start) / MIB}


def cells(args) -> list[tuple[str, dict]]:
    """(varied factor, cell) pairs, the base cell once (labelled "base")."""
    out = [("base", dict(BASE))]
    for flag, key in FACTORS.items():
        for value in getattr(args, flag):
            cell = {**BASE, key: value}
            if cell != BASE:
                out.append((flag, cell))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--group", type=int, nargs="*", default=[4, 8, 16, 32], help="G values")
    parser.add_argument("--states", type=int, nargs="*", default=[1, 2, 4], help="initial states per update")
    parser.add_argument("--chunks", type=int, nargs="*", default=[2, 4, 6, 12], help="chunks per rollout")
    parser.add_argument("--image-size", type=int, nargs="*", default=[32, 64, 128],
                        help="world model (and judge) image sizes")
    parser.add_argument("--imagination-steps", type=int, nargs="*", default=[10, 3, 1],
                        help="Euler steps per imagined clip (the demo's world model samples with 1)")
    parser.add_argument("--out", default="", help="also write the rows here as JSON")
    parser.add_argument("--cell", default="", help=argparse.SUPPRESS)   # one cell, in a child process
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell), args.threads)))
        return

    rows = []
    for factor, cell in tqdm(cells(args), desc="cells", unit="cell"):
        child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--cell", json.dumps(cell)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"cell {cell} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        rows.append({"factor": factor, **json.loads(child.stdout.strip().splitlines()[-1])})
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print_table(
        f"RL in imagination, one update around the demo recipe (G={BASE['group_size']}, {BASE['states_per_update']} "
        f"states, {BASE['chunks_per_rollout']} chunks, {BASE['image_size']} px, {BASE['imagination_steps']} Euler "
        f"steps; {args.threads} torch thread(s); seconds, MiB)",
        ["varied", "G", "states", "chunks", "px", "Euler", "rollouts", "imagine s", "  world model s", "  policy s",
         "  judge s", "imagine peak", "growth", "update s", "update peak", "growth"],
        [[r["factor"], r["group_size"], r["states_per_update"], r["chunks_per_rollout"], r["image_size"],
          r["imagination_steps"], r["rollouts"], r["imagine_s"], r["world_model_s"], r["policy_s"], r["judge_s"], r["imagine_peak_mib"],
          r["imagine_growth_mib"], r["update_s"], r["update_peak_mib"], r["update_growth_mib"]]
         for r in rows], float_format=".3g")
    base = rows[0]
    print(f"\nSizing: imagination ~{1000 * base['imagine_s'] / (base['rollouts'] * base['chunks_per_rollout']):.0f} ms "
          f"and the update ~{1000 * base['update_s'] / max(base['chunks_in_batch'], 1):.0f} ms per rollout-chunk at the "
          "base cell; the rows show how each factor departs from linear.")


if __name__ == "__main__":
    main()
