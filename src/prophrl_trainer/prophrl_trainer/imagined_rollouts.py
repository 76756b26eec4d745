"""The imagination collector: a policy acting closed loop inside a world model, scored by a judge (no ROS).

`imagine` steps groups of rollouts through a RolloutBackend (Prophet in process, or imagination servers
over ROS): at every chunk the policy acts on each rollout's current imagined frame and integrated state
(mode "sde" records the denoising latents and per-step log-probabilities that RL needs; "ode" is the
deterministic policy), the backend turns the chunks into the next clips, and a RolloutScorer judges them.
With early termination the scorer judges every live rollout's clip-so-far after each chunk and the first
chunk judged successful ends it (its later chunks get mask 0); otherwise, and for a rollout never judged
successful, the full clip is scored after the last chunk. The RL trainer (rl_trainer) learns from what it
returns; `prophrl eval --in-imagination` (imagined_evaluation) reads only its success. The backend may also be
the physics sim (sim_backend.SimRollouts), with a scorer that reads its ground truth (SimSuccessScorer). A backend
that knows the ground truth also gives each rollout's true success where it ended (Imagined.true_success), so a
judge's decisions on RL's own rollouts can be checked against the world's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from prophrl_common.config_io import ConfigError
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer.rollouts import RolloutBackend, RolloutScorer
from prophrl_worldmodel.imagination import ImaginationStart

def derived_seed(*parts: int) -> int:
    """A 32-bit seed derived from integer parts (independent streams for different parts)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def evaluation_seeds(seed: int, starts: int) -> tuple[list[int], int]:
    """The fixed randomness of a deterministic evaluation: one world-model seed per start, and the seed of
    the policy's generator. Every evaluation from the same seed and starts (the RL trainer's, every policy
    of `prophrl eval --in-imagination`) imagines with the same noise."""
    return [derived_seed(seed, 7_777, i) for i in range(starts)], derived_seed(seed, 7_778)


def ground_truth(group, j: int) -> bool:
    """Rollout j's success by the world's own task check (a scorer that reads it: sim_backend.SimSuccessScorer)."""
    if group.success is None:
        raise ConfigError("this reward reads the world's own success, which only rollouts in the sim know "
                          "(prophrl train --sim ROBOT/TASK)")
    return bool(group.success[j])


def eyes_mismatch(policy: VLAPolicy, world_model_image_size: int) -> str | None:
    """Why `policy` would see a world model's frames otherwise than its robot camera's (None when it sees them
    the same way): with camera_size it reduces every camera frame to that size first, which Prophet's frames
    of world_model_image_size px pass unchanged only when the two sizes are equal."""
    camera_size = policy.config.camera_size
    if camera_size and camera_size != world_model_image_size:
        return (f"the policy reduces camera frames to {camera_size} px first but the world model imagines "
                f"{world_model_image_size} px frames: in imagination it sees them at another resolution than on "
                f"the robot (SFT it with --camera-size {world_model_image_size})")
    return None


def judge_steps_mismatch(judges: Sequence[str], imagination_steps: int) -> str | None:
    """Why a judge would score imagined clips unlike those it learned (None when each judge's imagined training
    clips were sampled with `imagination_steps` Euler steps per clip, or it learned none): fewer steps draw the
    flow's blurred mean, more draw sharper and noisier frames, and a judge trained on one is fooled on the other."""
    from prophrl_worldmodel.judge_training import imagined_training_steps

    other = {judge: steps for judge in judges
             if (steps := imagined_training_steps(judge)) is not None and steps != imagination_steps}
    if not other:
        return None
    listed = ", ".join(f"{judge} ({steps})" for judge, steps in other.items())
    return (f"the judge learned Prophet's replays sampled with another number of Euler steps per clip than the "
            f"{imagination_steps} this run imagines with ({listed}): it scores frames unlike those it was trained "
            f"on, which RL learns to exploit (train it with `prophrl judge train --imagined-from PROPHET "
            f"--num-steps {imagination_steps}`)")


@dataclasses.dataclass(frozen=True)
class ImaginationSettings:
    chunks: int                      # policy chunks per rollout (one world-model clip each)
    sampler: SamplerConfig           # the policy's chunk sampler (steps, SDE noise level)
    early_termination: bool = True   # judge after every chunk; the first success ends the rollout
    reward: str = "probability"      # the judge's success probability, or its decision as 0 / 1
    keep_clips: bool = False         # keep the clip each rollout was decided on (Imagined.clips)


@dataclasses.dataclass
class Imagined:
    """The outcome of imagining n groups of G rollouts for up to C chunks."""

    images: torch.Tensor          # (n*G, C', 3, S, S)
    states: torch.Tensor          # (n*G, C', 8)
    latents: torch.Tensor | None  # (n*G, C', K+1, H, A), SDE only
    log_probs: torch.Tensor | None  # (n*G, C', K)
    means: torch.Tensor | None    # (n*G, C', K, H, A), the sampler's step means
    instructions: list[str]       # (n*G,)
    mask: np.ndarray              # (n, G, C') 1 = the chunk counts
    rewards: np.ndarray           # (n, G)
    success: np.ndarray           # (n, G) bool, the scorer's decision
    length: np.ndarray            # (n, G) chunks until termination
    timings: dict[str, float]
    true_success: np.ndarray | None = None  # (n, G) bool, the world's own check where the rollout ended (sim only)
    clips: list[np.ndarray] | None = None   # (n*G,) (T, H, W, 3) the clip each rollout was decided on (keep_clips)


def imagine(policy: VLAPolicy, backend: RolloutBackend, scorer: RolloutScorer,
            starts: Sequence[ImaginationStart], seeds: Sequence[int], num_rollouts: int, mode: str,
            generator: torch.Generator, settings: ImaginationSettings, stop_when_done: bool = True) -> Imagined:
    """Imagine a group of `num_rollouts` rollouts from each start (world-model seed per start); see the
    module docstring. stop_when_done: stop stepping once every rollout has ended. A backend with `max_rollouts`
    (how many rollouts it can hold at once, e.g. sims in memory) gets the starts a few groups at a time."""
    limit = getattr(backend, "max_rollouts", 0)
    if limit and len(starts) > 1 and len(starts) * num_rollouts > limit:
        per_call = max(1, limit // num_rollouts)
        return concatenate([imagine(policy, backend, scorer, starts[i:i + per_call], seeds[i:i + per_call], num_rollouts,
                                    mode, generator, settings, stop_when_done)
                            for i in range(0, len(starts), per_call)])
    n, g, chunks = len(starts), num_rollouts, settings.chunks
    timings = {"policy_s": 0.0, "world_model_s": 0.0, "judge_s": 0.0}
    groups = backend.open(starts, g, seeds)
    instructions = [group.instruction for group in groups for _ in range(g)]
    images, states, latents, log_probs, means = [], [], [], [], []
    alive = np.ones((n, g), bool)
    masks = []
    rewards = np.zeros((n, g), np.float32)
    success = np.zeros((n, g), bool)
    knows_truth = bool(getattr(backend, "knows_ground_truth", False))
    reads_truth = bool(getattr(scorer, "reads_ground_truth", False))
    true_success = np.zeros((n, g), bool) if knows_truth else None
    length = np.full((n, g), chunks, np.int64)
    decided_clips: list[np.ndarray | None] | None = [None] * (n * g) if settings.keep_clips else None
    try:
        for c in range(chunks):
            t0 = time.perf_counter()
            frames = np.concatenate([group.current_frames for group in groups])
            state = torch.from_numpy(np.concatenate([group.state for group in groups]).astype(np.float32))
            obs = Observation.from_frames(frames, instructions, state, policy.config)
            policy.eval()
            sample = policy.predict_action_chunk(obs, mode=mode, sampler=settings.sampler,
                                                      generator=generator)
            images.append(obs.images)
            states.append(state)
            if mode == "sde":
                latents.append(sample.latents.cpu())
                log_probs.append(sample.log_probs.cpu())
                means.append(sample.means.cpu())
            masks.append(alive.astype(np.float32))
            actions = sample.actions.cpu().numpy().reshape(n, g, *sample.actions.shape[1:])
            t1 = time.perf_counter()
            backend.step(groups, [actions[i] for i in range(n)])
            t2 = time.perf_counter()
            timings["policy_s"] += t1 - t0
            timings["world_model_s"] += t2 - t1
            last = c == chunks - 1
            if settings.early_termination or last:
                live = np.argwhere(alive)
                if len(live):
                    inputs = ([groups[i].frames[j] for i, j in live], [groups[i].instruction for i, _ in live],
                              [groups[i].state_history[j] for i, j in live])
                    truth = [ground_truth(groups[i], j) for i, j in live] if knows_truth or reads_truth else None
                    if reads_truth:
                        probs, decisions = scorer.score(*inputs, truth=truth)
                    else:
                        probs, decisions = scorer.score(*inputs)
                    probs = np.asarray(probs, np.float32).reshape(len(live))
                    decisions = np.asarray(decisions, bool).reshape(len(live))
                    if not np.isfinite(probs).all():
                        raise RuntimeError("the reward scorer returned NaN/inf")
                    for k, ((i, j), p, ok) in enumerate(zip(live, probs, decisions)):
                        ok = bool(ok)
                        if ok or last:
                            rewards[i, j] = p if settings.reward == "probability" else float(ok)
                            success[i, j], alive[i, j], length[i, j] = ok, False, c + 1
                            if knows_truth:
                                true_success[i, j] = truth[k]
                            if decided_clips is not None:
                                decided_clips[i * g + j] = inputs[0][k]
                timings["judge_s"] += time.perf_counter() - t2
            if stop_when_done and not alive.any():
                break
    finally:
        backend.close(groups)
    stack = (lambda xs: torch.stack(xs, 1) if xs else None)
    return Imagined(stack(images), stack(states), stack(latents), stack(log_probs), stack(means), instructions,
                    np.stack(masks, axis=2), rewards, success, length, timings, true_success, decided_clips)


def truth_metrics(imagined: Imagined, prefix: str, advantages: np.ndarray | None = None) -> dict[str, float]:
    """Where the world knows the ground truth (the sim): the share of rollouts that truly succeeded, and the share
    the scorer called successful that had not (the scorer's precision on them: 1 - false / success rate).
    With the rollouts' (groups, G) advantages, also the mean positive advantage per rollout and the part of it on
    rollouts that truly succeeded: their ratio is the share of what RL reinforces that is true success (1 with
    the sim's own reward; a judge that ranks a group's failures above its mean pays them too). Empty for a world
    model."""
    if imagined.true_success is None:
        return {}
    metrics = {f"{prefix}/true_success_rate": float(imagined.true_success.mean()),
               f"{prefix}/false_success_rate": float((imagined.success & ~imagined.true_success).mean())}
    if advantages is not None:
        positive = np.clip(np.asarray(advantages, np.float64).reshape(imagined.true_success.shape), 0.0, None)
        metrics[f"{prefix}/positive_advantage"] = float(positive.mean())
        metrics[f"{prefix}/positive_advantage_on_true_success"] = float((positive * imagined.true_success).mean())
    return metrics


def concatenate(parts: Sequence[Imagined]) -> Imagined:
    """One Imagined of several imagined one after another (groups in order); a part that stopped after fewer chunks
    is padded with masked chunks (mask 0, zeros)."""
    chunks = max(part.mask.shape[2] for part in parts)

    def tensors(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        if values[0] is None:
            return None
        padded = []
        for value in values:
            missing = chunks - value.shape[1]
            if missing:
                value = torch.cat([value, value.new_zeros((value.shape[0], missing, *value.shape[2:]))], dim=1)
            padded.append(value)
        return torch.cat(padded)

    mask = np.concatenate([np.pad(part.mask, ((0, 0), (0, 0), (0, chunks - part.mask.shape[2]))) for part in parts])
    return Imagined(tensors("images"), tensors("states"), tensors("latents"), tensors("log_probs"), tensors("means"),
                    [t for part in parts for t in part.instructions], mask,
                    np.concatenate([part.rewards for part in parts]), np.concatenate([part.success for part in parts]),
                    np.concatenate([part.length for part in parts]),
                    {key: sum(part.timings[key] for part in parts) for key in parts[0].timings},
                    None if parts[0].true_success is None else np.concatenate([part.true_success for part in parts]),
                    None if parts[0].clips is None else [clip for part in parts for clip in part.clips])
