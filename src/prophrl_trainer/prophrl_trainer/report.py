"""`prophrl eval`: ground-truth evaluation of policies in the physics sim, written as a report directory.

    prophrl eval --policy SFT=outputs/demo/policy_sft \\
                 --policy "FA-GRPO+FlowScale=runs/fs_s0,runs/fs_s1,runs/fs_s2" \\
                 --policy "FA-GRPO=runs/plain_s0,runs/plain_s1,runs/plain_s2" \\
                 --task lift --episodes 20 --world-model outputs/demo/prophet --out outputs/report

Each --policy is LABEL=PATH[,PATH...]: one path per training seed, each a policy checkpoint directory
(config.json + model.safetensors) or an RL run directory from `prophrl train` (its newest checkpoint's
policy is evaluated, its progress.jsonl gives the learning curves, the RL update count and wall time).
A label with several paths reports mean +- std over them (training seeds); a single checkpoint reports
mean +- std over --policy-seeds sampling seeds. Every policy meets the same held-out initial states
(seeds from --first-seed, never used for demonstrations). Each rate comes with its 95 % Wilson interval,
and every policy after the first with its gain over the first, paired by state, with a 95 % interval
(prophrl_trainer.success_statistics): on 20 states a gain of 10 points is usually inside the noise.

    prophrl eval ... --over-training "FA-GRPO+FlowScale=runs/fs_s0,runs/fs_s1"

also evaluates every retained checkpoint of those RL runs on the same states, beside the success the run
judged in imagination at that update (prophrl_trainer.training_curves): where the curves part, the policy
is exploiting the world model or the judge.

    prophrl eval ... --in-imagination --world-model outputs/demo/prophet --judge outputs/demo/judge

also evaluates every policy inside Prophet from the same held-out states, scored by the judge
(prophrl_trainer.imagined_evaluation), and reports its imagined success beside the true one with their
Pearson correlation across policies: how far Prophet can rank checkpoints before a robot runs them.

Writes OUT/report.md (the table), OUT/summary.json (success per policy / task / seed and per state, the
intervals, RL updates, wall time), OUT/learning_curves.png (imagined reward / success over updates per RL
run), with --over-training OUT/over_training/<task>.png and, with --world-model,
OUT/videos/<label>_<task>_seed<N>.mp4: the same policy from the same start, real sim frames | imagined
frames, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prophrl_common.config_io import ConfigError
from prophrl_common.devices import torch_device
from prophrl_common.outputs import OutputKind, check_run_dir
from prophrl_trainer.evaluation import EvalSettings, evaluate_jobs
from prophrl_trainer.held_out import EVAL_MAX_STEPS, HELD_OUT_SEED_BASE
from prophrl_trainer.imagined_evaluation import ImaginedEvalSettings, evaluate_in_imagination, held_out_starts, pearson
from prophrl_worldmodel.judge_episodes import JUDGING
from prophrl_trainer.success_statistics import Interval, paired_gain, per_state_success, wilson_interval
from prophrl_trainer.training_curves import (curve_table, evaluate_over_training, plot_imagined_vs_true,
                                             read_progress, run_checkpoints)

SUMMARY_FORMAT = "prophrl-eval-report-v1"


@dataclasses.dataclass(frozen=True)
class PolicySource:
    label: str
    policy_dir: Path                    # what is evaluated
    run_dir: Path | None = None         # the RL run it came from, if any

    @property
    def progress(self) -> list[dict]:
        return [] if self.run_dir is None else read_progress(self.run_dir)


def resolve_policy(label: str, path: str | Path) -> PolicySource:
    """A policy checkpoint directory, or an RL run directory (-> its newest checkpoint's policy). A run's
    selected policy (RUN/best_policy) keeps the run, for its learning curves."""
    from prophrl_trainer import checkpointing as ckpt

    path = Path(path)
    if (path / "model.safetensors").is_file():
        selected = path.name == ckpt.SELECTED_POLICY_DIR and (path.parent / "checkpoints").is_dir()
        return PolicySource(label, path, path.parent if selected else None)
    latest = ckpt.latest_checkpoint(path / "checkpoints")
    if latest is not None and (latest / ckpt.POLICY_DIR / "model.safetensors").is_file():
        return PolicySource(label, latest / ckpt.POLICY_DIR, path)
    raise ConfigError(f"{label}: {path} is neither a policy checkpoint (model.safetensors) nor an RL run "
                      f"directory with checkpoints/update_*/policy")


def labelled_paths(specs: Sequence[str], option: str) -> dict[str, list[str]]:
    """LABEL=PATH[,PATH...] options -> label -> paths (a malformed spec or a repeated label: ConfigError)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        label, sep, paths = spec.partition("=")
        label = label.strip()
        if not sep or not label or not paths.strip():
            raise ConfigError(f"{option} must be LABEL=PATH[,PATH...], got {spec!r}")
        if label in out:
            raise ConfigError(f"{option} label {label!r} given twice")
        out[label] = [p.strip() for p in paths.split(",") if p.strip()]
    return out


def parse_policy_args(specs: Sequence[str]) -> dict[str, list[PolicySource]]:
    policies = {label: [resolve_policy(label, path) for path in paths]
                for label, paths in labelled_paths(specs, "--policy").items()}
    if not policies:
        raise ConfigError("give at least one --policy LABEL=PATH")
    return policies


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _run_stats(source: PolicySource) -> dict:
    progress = source.progress
    if not progress:
        return {"rl_updates": 0, "rl_wall_time_s": 0.0}
    return {"rl_updates": int(progress[-1]["update"]),
            "rl_wall_time_s": float(sum(m.get("time/update_total_s", 0.0) for m in progress))}


def evaluate_all(policies: dict[str, list[PolicySource]], tasks: Sequence[str], settings: EvalSettings,
                 policy_seeds: int = 1, show_progress: bool = True, jobs: int = 1) -> dict:
    """summary dict: per label and task, the success of every training seed (and sampling seed), with the
    per-episode outcomes. jobs > 1 evaluates the checkpoints in parallel processes (same results)."""
    summary = {"format": SUMMARY_FORMAT, "robot": settings.robot, "episodes": settings.episodes,
               "first_seed": settings.first_seed, "max_steps": settings.max_steps,
               "replan_steps": settings.replan_steps, "num_steps": settings.num_steps, "policies": {}}
    work = [(str(source.policy_dir), dataclasses.replace(settings, task=task), k)
            for sources in policies.values() for task in tasks for source in sources for k in range(policy_seeds)]
    outcomes = iter(evaluate_jobs(work, jobs, show_progress))
    for label, sources in policies.items():
        entry = {"checkpoints": [str(s.policy_dir) for s in sources], "tasks": {},
                 "runs": [_run_stats(s) for s in sources]}
        for task in tasks:
            per_seed = []
            for source in sources:
                episodes = [next(outcomes) for _ in range(policy_seeds)]
                samples = [sum(e) / max(len(e), 1) for e in episodes]
                per_seed.append({"checkpoint": str(source.policy_dir), "sampling_seeds": samples,
                                 "success_rate": statistics.fmean(samples),
                                 "episode_successes": [[bool(x) for x in e] for e in episodes]})
            rates = [s["success_rate"] for s in per_seed] if len(per_seed) > 1 else per_seed[0]["sampling_seeds"]
            mean, std = _mean_std(rates)
            runs = [e for s in per_seed for e in s["episode_successes"]]
            pooled = wilson_interval(sum(map(sum, runs)), sum(map(len, runs)))
            entry["tasks"][task] = {"per_training_seed": per_seed, "mean": mean, "std": std,
                                    "std_over": "training seeds" if len(per_seed) > 1 else "sampling seeds",
                                    "ci95": [pooled.low, pooled.high], "per_state": per_state_success(runs)}
        summary["policies"][label] = entry
    _add_gains(summary, tasks)
    return summary


def _add_gains(summary: dict, tasks: Sequence[str]) -> None:
    """The paired gain of every policy over the first one, per task (same held-out states)."""
    labels = list(summary["policies"])
    if len(labels) < 2 or summary["episodes"] < 2:
        return
    baseline = labels[0]
    for label in labels[1:]:
        for task in tasks:
            gain = paired_gain(summary["policies"][baseline]["tasks"][task]["per_state"],
                               summary["policies"][label]["tasks"][task]["per_state"])
            summary["policies"][label]["tasks"][task]["gain"] = {
                "over": baseline, "estimate": gain.estimate, "ci95": [gain.low, gain.high], "states": gain.n}


def add_imagined_success(summary: dict, policies: dict[str, list[PolicySource]], tasks: Sequence[str],
                         settings: EvalSettings, imagined: ImaginedEvalSettings, show_progress: bool = True) -> None:
    """Each policy's imagined success on the summary's held-out states (mean over its checkpoints) and, per
    task, its Pearson correlation with the true success across policies and across (policy, state) pairs."""
    summary["imagined_vs_true"] = {"world_model": imagined.world_model, "judge": list(imagined.judges),
                                   "chunks": imagined.chunks, "rollouts": imagined.rollouts,
                                   "judging": imagined.judging, "tasks": {}}
    sources = [(label, source) for label, group in policies.items() for source in group]
    for task in tasks:
        starts = held_out_starts(dataclasses.replace(settings, task=task))
        per_source = evaluate_in_imagination([s.policy_dir for _, s in sources], starts, imagined, show_progress)
        true_means, imagined_means, true_states, imagined_states = [], [], [], []
        for label, entry in summary["policies"].items():
            rows = [states for (owner, _), states in zip(sources, per_source) if owner == label]
            per_state = np.mean(rows, axis=0).tolist()
            entry["tasks"][task]["imagined"] = {"mean": float(np.mean(per_state)), "per_state": per_state}
            true_means.append(entry["tasks"][task]["mean"])
            imagined_means.append(float(np.mean(per_state)))
            true_states += entry["tasks"][task]["per_state"]
            imagined_states += per_state
        summary["imagined_vs_true"]["tasks"][task] = {
            "pearson_policies": pearson(imagined_means, true_means),
            "pearson_states": pearson(imagined_states, true_states), "policies": len(true_means)}


def imagined_table(summary: dict) -> str:
    """The imagined-vs-true section of report.md ('' without an imagined evaluation)."""
    if "imagined_vs_true" not in summary:
        return ""
    info = summary["imagined_vs_true"]
    lines = [f"## Imagined vs true success (Prophet {info['world_model']}, judge {', '.join(info['judge'])}, "
             f"{info['chunks']} chunks, {info['rollouts']} world-model seed(s) per state, judged "
             f"{info.get('judging', 'every_chunk').replace('_', ' ')})", "",
             "| policy | task | imagined % | true % |", "|---|---|---|---|"]
    for label, entry in summary["policies"].items():
        for task, t in entry["tasks"].items():
            if "imagined" in t:
                lines.append(f"| {label} | {task} | {100 * t['imagined']['mean']:.1f} | {100 * t['mean']:.1f} |")
    lines.append("")
    for task, r in info["tasks"].items():
        across = "-" if r["pearson_policies"] is None else f"{r['pearson_policies']:+.2f}"
        states = "-" if r["pearson_states"] is None else f"{r['pearson_states']:+.2f}"
        lines.append(f"{task}: Pearson r across {r['policies']} policies {across}; across (policy, state) pairs "
                     f"{states} ('-': fewer than 3 points or no spread)")
    return "\n".join(lines) + "\n"


def ci_text(task_entry: dict) -> str:
    """A task entry's 95 % interval as '[5.7, 51.0]' (percent), '-' when it has none."""
    ci = task_entry.get("ci95")
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "-"


def gain_text(task_entry: dict) -> str:
    """A task entry's paired gain as '+20.0 pts [-5.0, +45.0]', '' when it has none."""
    gain = task_entry.get("gain")
    return Interval(gain["estimate"], *gain["ci95"], gain.get("states", 0)).percent(signed=True) if gain else ""


def markdown_table(summary: dict) -> str:
    tasks = sorted({t for p in summary["policies"].values() for t in p["tasks"]})
    lines = [f"# True success in the physics sim ({summary['robot']}, {summary['episodes']} held-out initial "
             f"states from seed {summary['first_seed']}, ODE sampling, {summary.get('replan_steps', 2)} action(s) "
             f"executed per chunk, {summary['max_steps']} steps max)", "",
             "| policy | " + " | ".join(f"{t} success % (mean ± std) | {t} 95 % CI | {t} gain (95 % CI)"
                                      for t in tasks) + " | seeds | RL updates | RL wall time |",
             "|---|" + "---|---|---|" * len(tasks) + "---|---|---|"]
    for label, entry in summary["policies"].items():
        cells = []
        for task in tasks:
            t = entry["tasks"][task]
            gained = f"{gain_text(t)} over {t['gain']['over']}" if "gain" in t else "-"
            cells.append(f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f} | {ci_text(t)} | {gained}")
        updates = [r["rl_updates"] for r in entry["runs"]]
        wall = [r["rl_wall_time_s"] for r in entry["runs"]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(entry['checkpoints'])} | "
                     f"{statistics.fmean(updates):.0f} | {statistics.fmean(wall) / 60:.1f} min |")
    lines += ["", "± is over training seeds when a policy has several checkpoints, else over sampling seeds. The 95 % CI "
              "is the Wilson interval over all its episodes; the gain is paired by state over the first policy "
              "(mean per-state difference, normal 95 % interval; prophrl_trainer.success_statistics)."]
    return "\n".join(lines) + "\n"


def plot_learning_curves(policies: dict[str, list[PolicySource]], path: Path) -> Path | None:
    curves = [(label, i, s.progress) for label, sources in policies.items() for i, s in enumerate(sources)
              if s.progress]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, seed, progress in curves:
        updates = [m["update"] for m in progress]
        axes[0].plot(updates, [m["rollout/reward_mean"] for m in progress], label=f"{label} #{seed}")
        axes[1].plot(updates, [m["rollout/success_rate"] for m in progress], label=f"{label} #{seed}")
        evals = [(m["update"], m["eval/success_rate"]) for m in progress if "eval/success_rate" in m]
        if evals:
            axes[1].plot(*zip(*evals), "o--", label=f"{label} #{seed} (eval)")
        # where the sim knew the truth (--sim, --replay-in-sim): the same rollouts' true success beside the judged
        for key, style, name in (("rollout/true_success_rate", ":", "true"),
                                 ("eval/true_success_rate", "s:", "eval, true")):
            truth = [(m["update"], m[key]) for m in progress if key in m]
            if truth:
                axes[1].plot(*zip(*truth), style, label=f"{label} #{seed} ({name})")
    axes[0].set(title="imagined reward (judge)", xlabel="RL update")
    axes[1].set(title="success rate: judged, and true where the sim knows it", xlabel="RL update")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def real_vs_imagined_video(policy_dir: Path, world_model_dir: Path, robot: str, task: str, seed: int, chunks: int,
                           path: Path, image_size: int = 128) -> Path:
    """The same policy from the same start: sim frames | Prophet frames, one chunk executed per replan."""
    from types import SimpleNamespace

    import cv2

    from prophrl_common.frames import resize_frames
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_sim.arm_sim import ArmSim, Pose
    from prophrl_trainer.sim_rollout import PolicyController, run_episode
    from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts
    from prophrl_worldmodel.modeling_prophet import Prophet

    policy = VLAPolicy.from_pretrained(policy_dir)
    prophet = Prophet.from_pretrained(world_model_dir).eval()
    horizon = prophet.config.action_horizon
    stride = prophet.config.actions_per_frame
    sim = ArmSim(robot, task, image_width=image_size, image_height=image_size)
    real, starts = [], []
    try:
        def on_step(record):
            if not starts:
                starts.append((record.image.copy(), record.observation.ee_pose.vector))
            real.append(record.image)
        outcome = run_episode(sim, PolicyController(policy, seed=seed), seed, max_steps=chunks * horizon,
                              replan_steps=horizon, steps_after_success=chunks * horizon, on_step=on_step)
    finally:
        sim.close()
    first_frame, ee_pose = starts[0]
    rollouts = ImaginedRollouts(prophet, ImaginationStart(first_frame, outcome.instruction, ee_pose), 1, seed=seed)
    controller = PolicyController(policy, seed=seed)
    for _ in range(chunks):
        frame = rollouts.current_frames[0]
        state_pose = rollouts.ee_poses[0]
        observation = SimpleNamespace(ee_pose=Pose(state_pose[:3], state_pose[3:]))
        # Prophet's frame as it is: the policy sees it as in RL's imagination (Observation.from_frames).
        chunk = controller.chunk(frame, outcome.instruction, observation, float(rollouts.grippers[0]))
        rollouts.step(_fit_chunk(chunk, horizon)[None])
    size = prophet.config.image_size
    real_frames = list(resize_frames(np.stack(real[stride - 1::stride]), size))
    imagined = list(rollouts.frames[0])
    count = min(len(real_frames), len(imagined))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 4, (2 * size * 2, size * 2))
    for r, i in zip(real_frames[:count], imagined[:count]):
        pair = np.concatenate([r, i], axis=1)
        writer.write(cv2.cvtColor(cv2.resize(pair, (4 * size, 2 * size), interpolation=cv2.INTER_NEAREST),
                                  cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _fit_chunk(chunk: np.ndarray, horizon: int) -> np.ndarray:
    """A policy chunk as the world model's chunk: truncated, or padded with zero motion + the last gripper."""
    chunk = np.asarray(chunk, np.float32)[:horizon]
    if len(chunk) < horizon:
        pad = np.zeros((horizon - len(chunk), chunk.shape[1]), np.float32)
        pad[:, 6] = chunk[-1, 6]
        chunk = np.concatenate([chunk, pad])
    return chunk


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prophrl eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", required=True, metavar="LABEL=PATH[,PATH...]")
    parser.add_argument("--robot", default="panda_sim")
    parser.add_argument("--task", nargs="+", default=["lift"])
    parser.add_argument("--episodes", type=int, default=20, help="held-out initial states per task")
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED_BASE)
    parser.add_argument("--max-steps", type=int, default=EVAL_MAX_STEPS, help="a held-out episode's step limit")
    parser.add_argument("--replan-steps", type=int, default=EvalSettings.replan_steps,
                        help="actions executed from each chunk before the policy is queried again (RL in "
                             "imagination executes whole chunks: pass the policy's horizon to evaluate that way)")
    parser.add_argument("--policy-seeds", type=int, default=1,
                        help="sampling seeds per checkpoint (the spread of a single-checkpoint policy)")
    parser.add_argument("--num-steps", type=int, default=0,
                        help="denoising steps per chunk in the sim (0: each checkpoint's own sampler)")
    parser.add_argument("--world-model", default="", help="Prophet checkpoint: also write real | imagined videos")
    parser.add_argument("--videos", type=int, default=1, help="videos per policy and task (with --world-model)")
    parser.add_argument("--video-chunks", type=int, default=4)
    parser.add_argument("--over-training", action="append", default=[], metavar="LABEL=RUN[,RUN...]",
                        help="RL run directories: true success of every retained checkpoint beside the imagined "
                             "success the run logged (over_training/<task>.png, a table in report.md)")
    parser.add_argument("--in-imagination", action="store_true",
                        help="also evaluate every policy inside --world-model, scored by --judge, from the same "
                             "held-out states (imagined vs true success and their correlation)")
    parser.add_argument("--judge", nargs="+", default=[], metavar="JUDGE",
                        help="reward judge checkpoint (with --in-imagination); several: their ensemble")
    parser.add_argument("--imagined-chunks", type=int, default=8, help="policy chunks per imagined rollout")
    parser.add_argument("--imagined-rollouts", type=int, default=2, help="world-model seeds per held-out state")
    parser.add_argument("--imagined-judging", choices=JUDGING, default=JUDGING[0],
                        help="every_chunk: the judge scores the clip so far after each chunk, the first success "
                             "counts (as in RL); final: only the whole clip after the last chunk")
    parser.add_argument("--jobs", type=int, default=1,
                        help="checkpoints evaluated in parallel processes (one torch thread each; same results)")
    parser.add_argument("--device", default="cpu", help="where the policies (and, in imagination, Prophet and the judge) run: "
                                                         "cpu | cuda | cuda:N")
    parser.add_argument("--out", required=True, help="report directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from prophrl_common.cli_errors import run_reporting_errors

    args = build_parser().parse_args(argv)
    return run_reporting_errors("prophrl eval", lambda: _report(args))


# What `prophrl eval --out` writes; a report is rewritten in place, never into another kind of directory.
REPORT_OUTPUT = OutputKind("evaluation report", frozenset({"report.md", "summary.json", "learning_curves.png",
                                                           "videos", "over_training"}))


def _parse_run_args(specs: Sequence[str]) -> dict[str, list[Path]]:
    """--over-training LABEL=RUN[,RUN...] -> label -> RL run directories (each checked for checkpoints)."""
    runs = {label: [Path(p) for p in paths] for label, paths in labelled_paths(specs, "--over-training").items()}
    for run in (run for paths in runs.values() for run in paths):
        run_checkpoints(run)
    return runs


def _report(args: argparse.Namespace) -> int:
    policies = parse_policy_args(args.policy)
    over_training = _parse_run_args(args.over_training)
    if args.episodes < 1 or args.policy_seeds < 1 or args.replan_steps < 1 or args.jobs < 1:
        raise ConfigError("--episodes, --policy-seeds, --replan-steps and --jobs must be >= 1")
    if args.num_steps < 0:
        raise ConfigError("--num-steps must be >= 0 (0: each checkpoint's own sampler)")
    torch_device(args.device)
    if args.world_model and not (Path(args.world_model) / "prophet_config.json").is_file():
        raise ConfigError(f"--world-model {args.world_model} is not a Prophet checkpoint (no prophet_config.json)")
    imagined = None
    if args.in_imagination:
        judges = tuple(judge for judge in args.judge if judge)
        if not args.world_model or not judges:
            raise ConfigError("--in-imagination needs --world-model and --judge")
        imagined = ImaginedEvalSettings(args.world_model, judges, args.imagined_chunks,
                                        args.imagined_rollouts, device=args.device,
                                        judging=args.imagined_judging).validate()
    out = check_run_dir(args.out, REPORT_OUTPUT, inputs=[
        args.world_model, *(source.policy_dir for sources in policies.values() for source in sources),
        *(run for runs in over_training.values() for run in runs)])
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    over_training_tables: dict[str, str] = {}
    settings = EvalSettings(robot=args.robot, episodes=args.episodes, first_seed=args.first_seed,
                            max_steps=args.max_steps, replan_steps=args.replan_steps, device=args.device,
                            num_steps=args.num_steps)
    summary = evaluate_all(policies, args.task, settings, args.policy_seeds, jobs=args.jobs)
    if imagined is not None:
        add_imagined_success(summary, policies, args.task, settings, imagined)
    summary["eval_wall_time_s"] = time.time() - start
    if over_training:
        summary["over_training"] = {}
        for task in args.task:
            points = evaluate_over_training(over_training, dataclasses.replace(settings, task=task), jobs=args.jobs)
            first, entry = next(iter(summary["policies"].items()))
            ci = entry["tasks"][task]["ci95"]
            baseline = (first, Interval(entry["tasks"][task]["mean"], ci[0], ci[1], settings.episodes))
            plot_imagined_vs_true(points, out / "over_training" / f"{task}.png", baseline)
            summary["over_training"][task] = [dataclasses.asdict(p) for p in points]
            over_training_tables[task] = curve_table(points)
    if plot_learning_curves(policies, out / "learning_curves.png"):
        summary["learning_curves"] = "learning_curves.png"
    if args.world_model:
        videos = []
        for label, sources in policies.items():
            for task in args.task:
                for k in range(args.videos):
                    seed = args.first_seed + k
                    name = f"{label.replace('/', '_').replace(' ', '_')}_{task}_seed{seed}.mp4"
                    real_vs_imagined_video(sources[0].policy_dir, Path(args.world_model), args.robot, task, seed,
                                           args.video_chunks, out / "videos" / name)
                    videos.append(f"videos/{name}")
        summary["videos"] = videos
    table = markdown_table(summary) + imagined_table(summary)
    extra = ""
    if summary.get("learning_curves"):
        extra += "\n![learning curves](learning_curves.png)\n"
    for task, curve in over_training_tables.items():
        extra += (f"\n## {task}: imagined vs true success over training\n\n{curve}"
                  f"\n![imagined vs true](over_training/{task}.png)\n")
    for video in summary.get("videos", []):
        extra += f"\n- [{video}]({video}) (real sim | imagined by Prophet, same policy, same start)"
    (out / "report.md").write_text(table + extra + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"report: {out / 'report.md'}, machine-readable: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
