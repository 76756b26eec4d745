"""Imagined vs true success along RL runs: does imagination still predict reality?

For every retained checkpoint of an RL run (``checkpoints/update_N/policy``: the newest
``keep_checkpoints`` and every multiple of ``milestone_every``, see RLConfig), true success in the physics
sim on the held-out initial states, beside what the run logged in imagination at that update:

- ``rollout/success_rate``: judged success of the update's training rollouts (SDE sampling, the update's
  start states);
- ``eval/success_rate``: judged success on the run's fixed imagined validation states (ODE sampling),
  where ``eval_every`` logged it.

A gap that widens over updates means the policy is exploiting the world model or the judge. `prophrl eval
--over-training LABEL=RUN[,RUN...]` writes the table and ``imagined_vs_true.png``.

Where the rollouts themselves ran in the sim with a judge as the reward (`prophrl train --sim ROBOT/TASK --judge J`),
every update also logged the sim's own success of the rollouts it judged (``rollout/true_success_rate``,
``rollout/false_success_rate``): ``reward_truth_blocks`` pools them per block of updates into the judge's precision
and recall on RL's own rollouts, the figure that falls when RL learns to fool the judge, and the share of the
positive advantage that went to true successes (what RL was taught: a judge that ranks well can still pay failures
above their group's mean).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from prophrl_common.config_io import ConfigError
from prophrl_trainer.evaluation import EvalSettings, evaluate_jobs
from prophrl_trainer.success_statistics import Interval, wilson_interval


@dataclasses.dataclass(frozen=True)
class CheckpointSuccess:
    """One checkpoint of one run: true success (sim) and what imagination said at that update."""

    label: str
    run: str
    update: int
    true: Interval
    imagined_rollouts: float | None     # rollout/success_rate at that update
    imagined_eval: float | None         # eval/success_rate at that update, when logged


def read_progress(run_dir: str | Path) -> list[dict]:
    """The per-update metrics of an RL run (progress.jsonl); [] when it has none. A damaged line is a
    ConfigError naming the file."""
    path = Path(run_dir) / "progress.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return records


@dataclasses.dataclass(frozen=True)
class RewardTruthBlock:
    """Updates ``first``..``last`` of a run whose rollouts the sim also checked: per-update rates, averaged."""

    first: int
    last: int
    judged: float          # rollout/success_rate: share of rollouts the reward called successful
    true: float            # rollout/true_success_rate: share the sim's own check passed where they ended
    false_success: float   # rollout/false_success_rate: judged successful, truly not
    positive_advantage: float = math.nan           # rollout/positive_advantage (NaN: not logged)
    positive_advantage_on_true: float = math.nan   # rollout/positive_advantage_on_true_success

    @property
    def advantage_on_true_success(self) -> float:
        """Share of the positive advantage that went to true successes: what RL reinforced that the sim calls a
        success (NaN where no group had a reward difference, or the run did not log it)."""
        if not self.positive_advantage > 0:
            return math.nan
        return self.positive_advantage_on_true / self.positive_advantage

    @property
    def precision(self) -> float:
        """Share of the judged successes that were true ones (NaN where nothing was judged successful)."""
        return (self.judged - self.false_success) / self.judged if self.judged > 0 else math.nan

    @property
    def recall(self) -> float:
        """Share of the true successes the reward called successful (NaN where there were none)."""
        return (self.judged - self.false_success) / self.true if self.true > 0 else math.nan


def reward_truth_blocks(history: Sequence[dict], block: int = 10) -> list[RewardTruthBlock]:
    """The judged against the sim's own success of RL's rollouts, per ``block`` consecutive updates (the last block
    may be shorter), from a run's per-update metrics (progress.jsonl). Updates that did not log the sim's success
    are left out; [] when none did. Every update of a run has the same number of rollouts, so the mean rates of a
    block pool its rollouts."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    rows = [m for m in history if "rollout/true_success_rate" in m and "rollout/false_success_rate" in m]
    blocks = []
    for i in range(0, len(rows), block):
        part = rows[i:i + block]

        def mean(key: str) -> float:
            return sum(float(m.get(key, math.nan)) for m in part) / len(part)

        blocks.append(RewardTruthBlock(int(part[0]["update"]), int(part[-1]["update"]), mean("rollout/success_rate"),
                                       mean("rollout/true_success_rate"), mean("rollout/false_success_rate"),
                                       mean("rollout/positive_advantage"),
                                       mean("rollout/positive_advantage_on_true_success")))
    return blocks


REWARD_TRUTH_HEADER = ["updates", "judged success", "true success", "judged, truly failed", "precision", "recall",
                       "advantage+ on true successes"]


def reward_truth_rows(blocks: Sequence[RewardTruthBlock]) -> list[list]:
    return [[f"{b.first}-{b.last}", b.judged, b.true, b.false_success, b.precision, b.recall,
             b.advantage_on_true_success] for b in blocks]


def run_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(update, policy directory) of every committed checkpoint of an RL run, oldest first."""
    from prophrl_trainer import checkpointing as ckpt

    run_dir = Path(run_dir)
    found = [(update, path / ckpt.POLICY_DIR) for update, path in ckpt.list_checkpoints(run_dir / "checkpoints")
             if (path / ckpt.POLICY_DIR / "model.safetensors").is_file()]
    if not found:
        raise ConfigError(f"{run_dir} is not an RL run directory with checkpoints/update_*/policy")
    return found


def evaluate_over_training(runs: dict[str, Sequence[str | Path]], settings: EvalSettings, jobs: int = 1,
                           show_progress: bool = True) -> list[CheckpointSuccess]:
    """True success of every retained checkpoint of every run (label -> run directories) on settings' states,
    with the run's imagined success at that update."""
    work, where = [], []
    for label, run_dirs in runs.items():
        for run_dir in run_dirs:
            progress = {int(m["update"]): m for m in read_progress(run_dir) if "update" in m}
            for update, policy_dir in run_checkpoints(run_dir):
                work.append((str(policy_dir), settings, 0))
                where.append((label, str(run_dir), update, progress.get(update, {})))
    points = []
    for (label, run_dir, update, metrics), successes in zip(where, evaluate_jobs(work, jobs, show_progress)):
        points.append(CheckpointSuccess(label, run_dir, update, wilson_interval(sum(successes), len(successes)),
                                        metrics.get("rollout/success_rate"), metrics.get("eval/success_rate")))
    return points


def curve_table(points: Sequence[CheckpointSuccess]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    lines = ["| policy | run | RL update | true success (95 % CI) | imagined: training rollouts | "
             "imagined: validation states |", "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.label} | {Path(p.run).name} | {p.update} | {p.true.percent()} | "
                     f"{cell(p.imagined_rollouts)} | {cell(p.imagined_eval)} |")
    return "\n".join(lines) + "\n"


def plot_imagined_vs_true(points: Sequence[CheckpointSuccess], path: Path,
                          baseline: tuple[str, Interval] | None = None) -> Path | None:
    """One panel per label: true success with its 95 % band and the imagined success, per run, and the update
    checkpoint selection kept (RUN/best_policy), where the run has one."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prophrl_trainer import checkpointing as ckpt

    labels = list(dict.fromkeys(p.label for p in points))
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for k, run in enumerate(dict.fromkeys(p.run for p in points if p.label == label)):
            mine = sorted((p for p in points if p.label == label and p.run == run), key=lambda p: p.update)
            updates = [p.update for p in mine]
            color = f"C{k}"
            ax.plot(updates, [100 * p.true.estimate for p in mine], "o-", color=color, label=f"true #{k}")
            ax.fill_between(updates, [100 * p.true.low for p in mine], [100 * p.true.high for p in mine],
                            color=color, alpha=0.15)
            imagined = [(p.update, 100 * p.imagined_rollouts) for p in mine if p.imagined_rollouts is not None]
            if imagined:
                ax.plot(*zip(*imagined), "s--", color=color, alpha=0.7, label=f"imagined rollouts #{k}")
            validation = [(p.update, 100 * p.imagined_eval) for p in mine if p.imagined_eval is not None]
            if validation:
                ax.plot(*zip(*validation), "^:", color=color, alpha=0.7, label=f"imagined validation #{k}")
            selection = ckpt.read_selection(run)
            if selection is not None:
                ax.axvline(selection["update"], color=color, linestyle="-.", alpha=0.6,
                           label=f"selected on validation #{k} (update {selection['update']})")
        if baseline is not None:
            name, interval = baseline
            ax.axhline(100 * interval.estimate, color="gray", label=f"{name} (true)")
            ax.axhspan(100 * interval.low, 100 * interval.high, color="gray", alpha=0.1)
        ax.set(title=f"{label}: imagined vs true success", xlabel="RL update", ylabel="success %", ylim=(-2, 102))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
