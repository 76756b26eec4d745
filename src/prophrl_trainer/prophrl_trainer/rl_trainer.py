"""RL of a VLA policy inside the Prophet world model: FA-GRPO + FlowScale on imagined rollouts (no ROS).

One update:
  1. sample `states_per_update` initial states (first frames + instruction + end-effector pose of
     recorded episodes, InitialStateSampler);
  2. for each, imagine a group of G closed-loop rollouts through a RolloutBackend: at every chunk the
     policy acts on each rollout's current imagined frame and integrated state with the SDE sampler
     (mode="sde"), which records the denoising latents and per-step log-probabilities; the backend
     (Prophet in process, or imagination servers over ROS) turns the chunks into the next clips;
  3. a RolloutScorer (the reward judge) scores the clips; rewards -> group-normalised advantages
     broadcast to the rollout's chunks;
  4. PPO-style epochs of the FA-GRPO loss (fa_grpo.policy_update).

Termination and masks (a choice; the paper only says "chunks after early termination are masked"):
the collector, prophrl_trainer.imagined_rollouts, ends a rollout at the first chunk after which the judge
calls it successful; its later chunks get mask 0 and never enter the loss. The reward is the judge's success
probability (`reward: probability`, a denser signal than pass/fail) or its thresholded decision
(`reward: binary`, the paper's judges' output).

Checkpoint selection (RLConfig.validation_states > 0): recorded episodes held out of the training draws are
imagined with the deterministic policy every `eval_every` updates and once before the first (the SFT policy,
update 0); the policy with the highest mean judge reward there is kept as RUN_DIR/best_policy, so a run that
starts to fool the world model keeps its best policy instead of its last (no simulator in the loop).

Mining (`mine_clips`, rollouts in the sim only): after every update's rollouts, the clip each was judged on and
the sim's own success where it ended go to RUN_DIR/mined_clips (prophrl_worldmodel.judge_mined_clips), the hard
negatives of a judge that RL fooled (`prophrl judge train --mined RUN_DIR/mined_clips`).

The trainer logs to TensorBoard (RUN_DIR/tensorboard) and tqdm, appends one JSON line per finished
update to RUN_DIR/progress.jsonl, checkpoints atomically (checkpointing.py) and calls an
on_checkpoint(policy_dir, update) hook (the trainer node pushes LoadPolicy from it). Data-parallel
training (torchrun): every rank imagines its own groups, DistributedDataParallel averages the
gradients of the update, rank 0 logs and checkpoints (with every rank's RNG state).

CLI: `prophrl train` (prophrl_trainer.train_cli).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from prophrl_common.chunks import ACTION_SPACES, POLICY_STATE_DIM
from prophrl_common import training_state
from prophrl_common.config_io import ConfigError
from prophrl_common.weights import NonFiniteError, require_finite
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.distributed import DataParallelPolicy, DistContext
from prophrl_trainer.imagined_rollouts import (Imagined, ImaginationSettings, derived_seed, evaluation_seeds,
                                               imagine, truth_metrics)
from prophrl_trainer.initial_states import InitialStateSampler
from prophrl_trainer.rl_config import RLConfig
from prophrl_trainer.rollouts import RolloutBackend, RolloutScorer
from prophrl_trainer.fa_grpo import (RolloutBatch, flowscale_weights,
                                     group_advantages, policy_update)
from prophrl_worldmodel.imagination import ImaginationStart



@dataclasses.dataclass
class ObservationBatch:
    """Per-chunk observations of a rollout batch, indexable by a LongTensor (RolloutBatch.obs)."""

    images: torch.Tensor          # (B, 3, S, S) float, exactly what the policy saw
    instructions: list[str]
    states: torch.Tensor          # (B, 8)

    def __getitem__(self, idx: torch.Tensor) -> Observation:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Observation(self.images[idx], [self.instructions[i] for i in idx.tolist()], self.states[idx])


class Trainer:
    """FA-GRPO (+ FlowScale) updates of `policy` on rollouts imagined by `backend`, scored by `scorer`."""

    def __init__(self, policy: VLAPolicy, backend: RolloutBackend, scorer: RolloutScorer,
                 sampler: InitialStateSampler, config: RLConfig, out_dir: str | Path, *,
                 ref_policy: VLAPolicy | None = None,
                 on_checkpoint: Callable[[Path, int], None] | None = None,
                 on_update: Callable[[dict], None] | None = None,
                 show_progress: bool = True, dist: DistContext | None = None, run_info: dict | None = None,
                 mine_clips: bool = False):
        pc = policy.config
        if pc.horizon != backend.action_horizon:
            raise ConfigError(f"the policy's chunk horizon is {pc.horizon} but the world model executes "
                              f"{backend.action_horizon} actions per clip (frames_per_clip * actions_per_frame): "
                              "RL needs them equal (SFT the policy with --horizon to match)")
        if pc.robot_action_dim != ACTION_SPACES["ee_delta_7d"] or pc.state_dim != POLICY_STATE_DIM:
            raise ConfigError(f"RL in imagination needs an ee_delta_7d policy (robot_action_dim "
                              f"{ACTION_SPACES['ee_delta_7d']}, state_dim {POLICY_STATE_DIM})")
        if config.algorithm.kl_beta > 0 and ref_policy is None:
            raise ConfigError("kl_beta > 0 needs the SFT policy as reference (ref_policy)")
        if getattr(scorer, "reads_ground_truth", False) and not getattr(backend, "knows_ground_truth", False):
            raise ConfigError(f"the reward reads the world's own success, which {type(backend).__name__} does not "
                              "know (the sim's success reward needs rollouts in the sim: prophrl train --sim)")
        if mine_clips and not getattr(backend, "knows_ground_truth", False):
            raise ConfigError(f"mining clips labels them by the world's own success, which {type(backend).__name__} "
                              "does not know (prophrl train --sim ROBOT/TASK)")
        if config.shared_world_model_noise and not getattr(backend, "supports_shared_noise", False):
            raise ConfigError("shared_world_model_noise needs in-process imagination (`prophrl train`); "
                              f"{type(backend).__name__} does not share noise within a group")
        self.policy, self.backend, self.scorer, self.sampler = policy, backend, scorer, sampler
        self.config, self.out_dir = config, Path(out_dir)
        self.ref_policy = ref_policy.eval().requires_grad_(False) if ref_policy is not None else None
        self.on_checkpoint, self.on_update = on_checkpoint, on_update
        self.show_progress = show_progress
        self.dist = dist or DistContext()
        self.run_info = run_info or {}
        self.mine_clips = self.out_dir / ckpt.MINED_CLIPS_DIR if mine_clips else None
        self.device = policy.action_pos.device
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        rank = self.dist.rank
        # policy sampling noise (on the policy's device) and minibatch order (CPU), per rank
        self.generator = torch.Generator(device=self.device).manual_seed(derived_seed(config.seed, rank, 1))
        self.order_generator = torch.Generator().manual_seed(derived_seed(config.seed, rank, 2))
        # the policy samples (and its checkpoints record) the RL chunk sampler
        policy.config = dataclasses.replace(policy.config, num_inference_steps=config.chunk_sampler.num_steps,
                                            noise_level=config.chunk_sampler.noise_level)
        policy.compute_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else None
        self.step_variances = config.chunk_sampler.step_noise_variance()
        self.flowscale = flowscale_weights(self.step_variances, config.algorithm.flowscale)
        self.train_policy = DataParallelPolicy(policy, self.device) if self.dist.enabled else policy
        self.update = 0
        self.history: list[dict] = []
        self.local_rewards: list[float] = []
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.last_checkpoint: Path | None = None
        self.selected: dict | None = None   # the checkpoint selection's record: update and validation scores
        self._resumed = False

    # ----- imagination ---------------------------------------------------------------------------
    def imagine(self, starts: Sequence[ImaginationStart], seeds: Sequence[int], num_rollouts: int, mode: str,
                generator: torch.Generator, stop_when_done: bool = True) -> Imagined:
        cfg = self.config
        settings = ImaginationSettings(cfg.chunks_per_rollout, cfg.chunk_sampler, cfg.early_termination, cfg.reward,
                                       keep_clips=mode == "sde" and self.mine_clips is not None)
        return imagine(self.policy, self.backend, self.scorer, starts, seeds, num_rollouts, mode, generator, settings,
                       stop_when_done)

    def rollout_batch(self, imagined: Imagined, advantages: torch.Tensor, drop_masked: bool) -> RolloutBatch:
        """Flatten (n*G, C') chunks into a RolloutBatch on the policy's device (only the valid chunks unless
        data-parallel)."""
        ng, c = imagined.images.shape[:2]
        flat = (lambda x: x.reshape(ng * c, *x.shape[2:]).to(self.device))
        mask = torch.from_numpy(imagined.mask.reshape(ng, c)).reshape(-1).to(self.device)
        adv = advantages.reshape(ng, 1).expand(ng, c).reshape(-1).to(self.device)
        instructions = [t for t in imagined.instructions for _ in range(c)]
        obs = ObservationBatch(flat(imagined.images), instructions, flat(imagined.states))
        batch = RolloutBatch(obs, flat(imagined.latents), flat(imagined.log_probs), adv.float(), mask,
                             flat(imagined.means))
        if not drop_masked:
            return batch
        keep = torch.nonzero(mask > 0).flatten()
        obs = ObservationBatch(obs.images[keep], [instructions[i] for i in keep.tolist()], obs.states[keep])
        return RolloutBatch(obs, batch.latents[keep], batch.old_log_probs[keep], batch.advantages[keep],
                            torch.ones(len(keep), device=self.device), batch.old_means[keep])

    # ----- one update ----------------------------------------------------------------------------
    def collect_rollouts(self) -> Imagined:
        """Step 1-3 of an update: `states_per_update` groups of G rollouts imagined with the SDE sampler."""
        cfg = self.config
        starts = self.sampler.sample(cfg.states_per_update)
        seeds = [derived_seed(cfg.seed, self.dist.rank, self.update, i) for i in range(len(starts))]
        return self.imagine(starts, seeds, cfg.group_size, "sde", self.generator, stop_when_done=not self.dist.enabled)

    def advantages(self, imagined: Imagined) -> torch.Tensor:
        """(groups, G) group-normalised advantages of `imagined`'s rewards."""
        return group_advantages(torch.from_numpy(imagined.rewards).double(), self.config.algorithm.advantage_eps)

    def learn(self, imagined: Imagined) -> dict[str, float]:
        """Step 4 of an update: FA-GRPO epochs on `imagined`; returns the loss statistics."""
        cfg = self.config
        advantages = self.advantages(imagined).flatten()
        batch = self.rollout_batch(imagined, advantages, drop_masked=not self.dist.enabled)
        stats = policy_update(self.train_policy, self.optimizer, batch, cfg.algorithm, cfg.chunk_sampler,
                              epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size or None,
                              max_grad_norm=cfg.max_grad_norm, ref_policy=self.ref_policy,
                              generator=self.order_generator, skip_empty=not self.dist.enabled,
                              target_kl=cfg.target_kl)
        if not math.isfinite(stats["loss"]):
            raise NonFiniteError(f"RL update {self.update + 1}: the loss became {stats['loss']}; training diverged "
                                 "(lower learning_rate), the last checkpoint is kept")
        require_finite(dict(self.policy.named_parameters()), f"RL update {self.update + 1}: the policy weights")
        return stats

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        imagined = self.collect_rollouts()
        if self.mine_clips is not None:
            self.save_mined_clips(imagined)
        t1 = time.perf_counter()
        stats = self.learn(imagined)
        t2 = time.perf_counter()
        group_std = imagined.rewards.std(axis=1)
        metrics = {
            "rollout/reward_mean": float(imagined.rewards.mean()),
            "rollout/success_rate": float(imagined.success.mean()),
            "rollout/length_chunks": float(imagined.length.mean()),
            "rollout/valid_chunk_fraction": float(imagined.mask.mean()),
            "rollout/reward_std_in_group": float(group_std.mean()),
            "rollout/groups_without_signal": float((group_std < 1e-8).mean()),
            **{f"train/{k}": float(v) for k, v in stats.items()},
            "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
            **{f"time/{k}": v for k, v in imagined.timings.items()},
            **truth_metrics(imagined, "rollout", self.advantages(imagined).numpy()),
        }
        self.local_rewards.append(metrics["rollout/reward_mean"])  # this rank's own, before averaging
        return self.dist.mean(metrics)

    def save_mined_clips(self, imagined: Imagined) -> Path:
        """This update's rollouts, each the clip it was judged on with the sim's own success, for the judge's
        training (prophrl_worldmodel.judge_mined_clips)."""
        from prophrl_worldmodel.judge_mined_clips import mined_clip_path, save_mined_clips

        g = imagined.rewards.shape[1]
        return save_mined_clips(mined_clip_path(self.mine_clips, self.update + 1, self.dist.rank), imagined.clips,
                                imagined.true_success.reshape(-1), imagined.rewards.reshape(-1), imagined.instructions,
                                np.arange(imagined.rewards.size) // g, self.update + 1)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic (ODE) policy from fixed starts (the held-out validation states when there are any) with
        fixed world-model seeds; does not touch the training RNG streams (so evaluation never changes training)."""
        cfg = self.config
        starts = self.sampler.validation or self.sampler.fixed(cfg.eval_states)
        seeds, policy_seed = evaluation_seeds(cfg.seed, len(starts))
        generator = torch.Generator(device=self.device).manual_seed(policy_seed)
        imagined = self.imagine(starts, seeds, cfg.eval_rollouts, "ode", generator)
        return {"eval/reward_mean": float(imagined.rewards.mean()), "eval/success_rate": float(imagined.success.mean()),
                "eval/length_chunks": float(imagined.length.mean()), **truth_metrics(imagined, "eval")}

    def select(self, metrics: dict[str, float]) -> bool:
        """Keep the current policy as RUN_DIR/best_policy when its validation `metrics` beat the selected one's
        (ties keep the earlier). Main rank only. Returns whether it was kept."""
        score = metrics["eval/reward_mean"]
        if self.selected is not None and score <= self.selected["eval/reward_mean"]:
            return False
        self.selected = {"update": self.update, "eval/reward_mean": score,
                         "eval/success_rate": metrics["eval/success_rate"],
                         "validation_states": len(self.sampler.validation), "rollouts": self.config.eval_rollouts}
        ckpt.save_selected_policy(self.out_dir, self.policy, self.selected)
        return True

    # ----- checkpoints ---------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        return {"generator": self.generator.get_state().cpu().numpy().tolist(),
                "order_generator": self.order_generator.get_state().numpy().tolist(),
                "torch_global": torch.get_rng_state().numpy().tolist(),
                "numpy": self.sampler.get_state(), "python": training_state.python_rng_state()}

    def save_checkpoint(self) -> Path | None:
        """Collective under data parallelism (every rank's RNG state is gathered); rank 0 writes."""
        states = self.dist.gather(self._rng_state())
        if not self.dist.is_main:
            return None
        tensors = {}
        for rank, state in enumerate(states):
            for key in ("generator", "order_generator", "torch_global"):
                tensors[f"rank{rank}.{key}"] = torch.tensor(state[key], dtype=torch.uint8)
        json_state = {"world_size": self.dist.world_size, "history": self.history, "run": self.run_info,
                      "selected": self.selected,
                      "rng": [{"numpy": s["numpy"], "python": s["python"]} for s in states]}
        path = ckpt.save_checkpoint(self.checkpoint_dir, self.update, self.policy, self.optimizer, tensors,
                                    json_state, self.config.to_json(), self.config.keep_checkpoints,
                                    self.config.milestone_every)
        self.last_checkpoint = path
        if self.on_checkpoint is not None:
            self.on_checkpoint(path / ckpt.POLICY_DIR, self.update)
        return path

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore policy, optimizer, RNG streams, update count and history from a checkpoint."""
        path = Path(path)
        saved_config = RLConfig.from_json_file(path / ckpt.CONFIG_JSON, complete=True)
        if dataclasses.replace(saved_config, updates=self.config.updates) != self.config:
            raise ConfigError(f"{path}: the checkpoint was made with a different RL config")
        tensors, state = ckpt.load_checkpoint(path, self.policy, self.optimizer)
        rank = self.dist.rank
        if state.get("world_size", 1) == self.dist.world_size:
            self.generator.set_state(tensors[f"rank{rank}.generator"].to(self.generator.get_state().device))
            self.order_generator.set_state(tensors[f"rank{rank}.order_generator"])
            torch.set_rng_state(tensors[f"rank{rank}.torch_global"])
            self.sampler.set_state(state["rng"][rank]["numpy"])
            training_state.set_python_rng_state(state["rng"][rank]["python"])
        else:  # a different number of ranks: the streams cannot continue; reseed them from the update count
            self.generator.manual_seed(derived_seed(self.config.seed, rank, 1, state["update"]))
            self.order_generator.manual_seed(derived_seed(self.config.seed, rank, 2, state["update"]))
            self.sampler.rng = np.random.default_rng([self.config.seed, rank, state["update"]])
        self.update = int(state["update"])
        self.history = list(state.get("history", []))
        self.selected = state.get("selected")
        self.last_checkpoint = path
        self._resumed = True
        return self.update

    def resume(self) -> int:
        """Continue from the newest checkpoint in out_dir/checkpoints (0 if there is none)."""
        ckpt.clean_stale(self.checkpoint_dir)
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        return self.load_checkpoint(latest) if latest is not None else 0

    # ----- the loop ------------------------------------------------------------------------------
    def run(self, num_updates: int | None = None) -> list[dict]:
        """Train until `num_updates` updates have been done in total (default config.updates); a resumed
        trainer continues where its checkpoint stopped. Returns the per-update metrics history."""
        from tqdm import tqdm

        num_updates = self.config.updates if num_updates is None else int(num_updates)
        main = self.dist.is_main
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_stale(self.checkpoint_dir)
            writer = SummaryWriter(str(self.out_dir / "tensorboard"),
                                   purge_step=self.update + 1 if self._resumed else None)
            self._rewrite_progress()
            for k, w in enumerate(self.flowscale.tolist()):
                writer.add_scalar(f"flowscale/w_{k:02d}", w, self.update)
        selecting = self.config.validation_states > 0
        if selecting and main and self.selected is None:
            self.select(self.evaluate())   # the SFT policy: update 0
        bar = tqdm(total=num_updates, initial=self.update, desc=f"FA-GRPO ({self.config.variant})", unit="update",
                   disable=not (self.show_progress and main), dynamic_ncols=True)
        try:
            while self.update < num_updates:
                start = time.perf_counter()
                metrics = self.train_step()
                self.update += 1
                if self.config.eval_every and self.update % self.config.eval_every == 0 and main:
                    metrics.update(self.evaluate())
                    if selecting:
                        metrics["eval/selected"] = float(self.select(metrics))
                metrics = {"update": self.update, **metrics, "time/update_total_s": time.perf_counter() - start}
                self.history.append(metrics)
                if self.update % self.config.checkpoint_every == 0 or self.update == num_updates:
                    self.save_checkpoint()
                if main:
                    for key, value in metrics.items():
                        if key != "update":
                            writer.add_scalar(key, value, self.update)
                    writer.flush()
                    with (self.out_dir / "progress.jsonl").open("a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}",
                                    success=f"{metrics['rollout/success_rate']:.2f}",
                                    clip=f"{metrics['train/clip_fraction']:.2f}")
                    if self.on_update is not None:
                        self.on_update(metrics)
                bar.update(1)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.history

    def _rewrite_progress(self) -> None:
        """progress.jsonl holds exactly the updates of the history (drops lines past a resumed checkpoint)."""
        path = self.out_dir / "progress.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        os.replace(tmp, path)
