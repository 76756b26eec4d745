"""Prophet world-model fidelity: corpus -> pretrain -> few-shot adaptation on a held-out combination -> eval.

1. corpus: scripts/collect_worldmodel_corpus.py (sim episodes over robots x tasks x views, one
   robot/task/view combination held out), reused when --corpus points at an existing one;
2. pretrain a Prophet on the pretraining datasets;
3. adapt it (LoRA by default) to the held-out combination's training episodes (<= 50 episodes);
4. replay the held-out combination's held-out episodes closed loop from their first frame with
   their recorded actions and score imagined vs real frames per horizon (PSNR, SSIM, Farneback flow
   EPE / cos) for the copy-last-frame baseline, the pretrained and the adapted model; also the
   pretrained model on the pretraining datasets' held-out episodes (in distribution).

Prints the fidelity tables and a timing table; writes OUT/bench.json, OUT/eval_*/summary.json and
side-by-side videos. Full scale (hours on one CPU core):

    python bench/prophet_fidelity.py --out outputs/prophet_fidelity --episodes 20 --held-out-episodes 50 \
        --image-size 64 --vae-steps 1000 --steps 4000 --adapt-steps 500

The shipped Prophet (prophrl_worldmodel.pretrained) on the corpus scripts/pretrain_shipped_prophet.sh made
for it (its held-out combination: ur5e_sim/door/agentview):

    python bench/prophet_fidelity.py --out outputs/fidelity_shipped --corpus data/worldmodel_corpus_shipped \
        --pretrained sim_tiny_32px --adapt-steps 1000 --mode full --eval-episodes 10 --chunks 6

Small scale (minutes):

    python bench/prophet_fidelity.py --out /tmp/fid --episodes 2 --held-out-episodes 6 --tasks lift door \
        --image-size 32 --vae-steps 150 --steps 300 --adapt-steps 100 --eval-episodes 2 --chunks 2 --num-steps 4
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _corpus_module():
    spec = importlib.util.spec_from_file_location("collect_worldmodel_corpus",
                                                  REPO / "scripts" / "collect_worldmodel_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def autoencoder_ceiling(model, dataset_dirs, frames_per_episode: int = 16) -> dict[str, float]:
    """PSNR / SSIM of the VAE's reconstruction of held-out real frames: no imagined frame can score above it."""
    import numpy as np

    from prophrl_worldmodel.clips import load_episodes, split_episodes
    from prophrl_worldmodel.metrics import psnr, ssim
    from prophrl_worldmodel.training import DEFAULT_HELD_OUT_FRACTION

    episodes = split_episodes(load_episodes(dataset_dirs, model.config.image_size), DEFAULT_HELD_OUT_FRACTION)[1]
    real = np.concatenate([e.frames[np.linspace(0, len(e) - 1, frames_per_episode).astype(int)] for e in episodes])
    model.eval()
    decoded = model.decode_latents(model.encode_frames(real[None]))[0].round().clamp(0, 255).to(torch.uint8).numpy()
    return {"psnr": float(np.mean([min(psnr(d, r), 100.0) for d, r in zip(decoded, real)])),
            "ssim": float(np.mean([ssim(d, r) for d, r in zip(decoded, real)]))}


def horizons_beating(report: dict, baseline: dict) -> str:
    """'a / b / c of n': the predicted frames at which `report` beats the copy-last-frame `baseline` on PSNR and
    SSIM (higher) and on flow EPE (lower)."""
    h, b = report["horizon"], baseline["horizon"]
    wins = [sum(x > y for x, y in zip(h["psnr"], b["psnr"])), sum(x > y for x, y in zip(h["ssim"], b["ssim"])),
            sum(x < y for x, y in zip(h["flow_epe"], b["flow_epe"]))]
    return f"{wins[0]} / {wins[1]} / {wins[2]} of {len(h['psnr'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, help="existing corpus directory (default OUT/corpus, collected)")
    parser.add_argument("--episodes", type=int, default=20, help="corpus: episodes per pretraining combination")
    parser.add_argument("--held-out-episodes", type=int, default=50, help="corpus: held-out combination episodes")
    parser.add_argument("--robots", nargs="+", default=["panda_sim", "ur5e_sim"])
    parser.add_argument("--tasks", nargs="+", default=["lift", "stack", "door"])
    parser.add_argument("--views", nargs="+", default=["frontview", "sideview"])
    parser.add_argument("--held-out", default="ur5e_sim/door/frontview")
    parser.add_argument("--corpus-image-size", type=int, default=64)
    parser.add_argument("--pretrained", metavar="NAME|DIR", help="evaluate and adapt this Prophet (a shipped one's "
                        "name, e.g. sim_tiny_32px, or a checkpoint directory) instead of pretraining one")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--image-size", type=int, default=64, help="Prophet image size")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--adapt-steps", type=int, default=500)
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--eval-episodes", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--num-steps", type=int, help="Euler steps per clip (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from prophrl_common.atomic_io import write_json_atomic
    from prophrl_common.tables import format_table
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet
    from prophrl_worldmodel.pretrained import resolve_prophet
    from prophrl_worldmodel.training import METRIC_FIELDS, SUMMARY_NAME, adapt, evaluate_fidelity, pretrain

    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus_dir = args.corpus or args.out / "corpus"
    begin = time.perf_counter()
    if (corpus_dir / "corpus.json").is_file():
        manifest = json.loads((corpus_dir / "corpus.json").read_text())
        print(f"reusing corpus {corpus_dir}")
    else:
        corpus = _corpus_module()
        manifest = corpus.collect_corpus(corpus_dir, args.episodes, args.held_out_episodes, robots=args.robots,
                                         tasks=args.tasks, views=args.views,
                                         held_out=corpus.parse_combination(args.held_out),
                                         image_size=args.corpus_image_size)
        print(corpus.format_rows(manifest["combinations"]))
    timings["corpus"] = time.perf_counter() - begin
    pretrain_data, heldout_data = manifest["pretrain_datasets"], manifest["heldout_datasets"]
    if not heldout_data:
        raise SystemExit("the corpus has no held-out combination (collect it with --held-out-episodes > 0)")

    begin = time.perf_counter()
    if args.pretrained:
        pretrained = resolve_prophet(args.pretrained)
        config = Prophet.from_pretrained(pretrained).config
    else:
        config = get_prophet_config(args.config, image_size=args.image_size)
        pretrained = pretrain(pretrain_data, config, args.out / "pretrained", vae_steps=args.vae_steps,
                              steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              log_dir=args.out / "tb_pretrain")
    timings["pretrain"] = time.perf_counter() - begin
    pre_summary = json.loads((pretrained / SUMMARY_NAME).read_text())

    begin = time.perf_counter()
    adapted = adapt(pretrained, heldout_data, args.adapt_steps, args.mode, args.out / f"adapted_{args.mode}",
                    batch_size=args.batch_size, seed=args.seed, log_dir=args.out / "tb_adapt")
    timings["adapt"] = time.perf_counter() - begin

    eval_common = dict(episodes=args.eval_episodes, chunks=args.chunks, seed=args.seed)
    models = {"pretrained": Prophet.from_pretrained(pretrained),
              f"adapted_{args.mode}": Prophet.from_pretrained(adapted.checkpoint_path)}
    reports = {}
    begin = time.perf_counter()
    reports["heldout"] = [evaluate_fidelity(None, heldout_data, args.out / "eval_heldout", config=config,
                                            label="baseline", **eval_common)]
    for label, model in models.items():
        reports["heldout"].append(evaluate_fidelity(model, heldout_data, args.out / "eval_heldout",
                                                    num_steps=args.num_steps, label=label, **eval_common))
    timings["eval_heldout"] = time.perf_counter() - begin
    begin = time.perf_counter()
    reports["pretrain_data"] = [
        evaluate_fidelity(None, pretrain_data, args.out / "eval_pretrain_data", config=config, label="baseline",
                          **eval_common),
        evaluate_fidelity(models["pretrained"], pretrain_data, args.out / "eval_pretrain_data",
                          num_steps=args.num_steps, label="pretrained", **eval_common)]
    timings["eval_pretrain_data"] = time.perf_counter() - begin

    ceilings = {split: autoencoder_ceiling(models["pretrained"], data)
                for split, data in (("heldout", heldout_data), ("pretrain_data", pretrain_data))}
    names = {"psnr": "PSNR dB", "ssim": "SSIM", "flow_epe": "EPE px", "flow_cos": "cos"}
    for split, title in (("heldout", f"held-out combination {manifest['held_out']}"),
                         ("pretrain_data", "pretraining combinations (held-out episodes)")):
        baseline = reports[split][0]
        rows = [[r["label"], *(r["mean"][m] for m in METRIC_FIELDS), r["num_episodes"],
                 "-" if r is baseline else horizons_beating(r, baseline)] for r in reports[split]]
        rows.append(["VAE reconstruction (ceiling)", ceilings[split]["psnr"], ceilings[split]["ssim"], None, None,
                     len(reports[split][0]["episodes"]), "-"])
        print(format_table(f"\nfidelity on the {title}: {args.chunks} chunk(s) closed loop, mean over horizons",
                           ["model", *(names[m] for m in METRIC_FIELDS), "episodes",
                            "horizons beating copy: PSNR / SSIM / EPE"], rows))
        horizons = len(reports[split][0]["horizon"]["psnr"])
        print(format_table("PSNR dB per predicted frame", ["model", *(f"h{h + 1}" for h in range(horizons))],
                           [[r["label"], *r["horizon"]["psnr"]] for r in reports[split]]))
    print(format_table("\ntraining", ["metric", "value"], [
        ["pretrain train episodes / clips", f"{pre_summary['train_episodes']} / {pre_summary['train_clips']}"],
        ["pretrain VAE L1 first -> last", f"{pre_summary['vae_l1_first']:.4f} -> {pre_summary['vae_l1_last']:.4f}"],
        ["pretrain loss first -> last", f"{pre_summary['loss_first']:.4f} -> {pre_summary['loss_last']:.4f}"],
        ["pretrain held-out loss", pre_summary.get("held_out_loss")],
        ["pretrain step time s (batch %d)" % args.batch_size, pre_summary["step_time_s"]],
        ["VAE step time s", pre_summary["vae_seconds"] / max(pre_summary["vae_steps"], 1)],
        ["adapt train episodes", adapted.metrics["train_episodes"]],
        ["adapt held-out loss before -> after",
         f"{adapted.metrics['loss_before']:.4f} -> {adapted.metrics['loss_after']:.4f}"],
        ["adapt step time s", adapted.metrics["step_time_s"]],
    ]))
    print(format_table("\ntimings", ["stage", "seconds"], [[k, v] for k, v in timings.items()]))
    write_json_atomic(args.out / "bench.json", {
        "args": {k: str(v) for k, v in vars(args).items()}, "timings": timings, "pretrain": pre_summary,
        "adapt": adapted.metrics, "autoencoder_ceiling": ceilings,
        "fidelity": {split: {r["label"]: {"mean": r["mean"], "horizon": r["horizon"]} for r in rows}
                     for split, rows in reports.items()}})


if __name__ == "__main__":
    main()
