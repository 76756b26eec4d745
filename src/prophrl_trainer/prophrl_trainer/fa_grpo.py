"""FA-GRPO + FlowScale: group-relative policy optimisation for flow-matching action heads. Pure torch.

Notation (PAPER.md): a group of G rollouts from one initial observation gets rewards R_i and
advantages A_i = (R_i - mean_G) / (std_G + eps), broadcast to every action chunk of rollout i
(chunks after early termination are masked out). Each chunk was produced by K stochastic denoising
steps x_k -> x_{k+1} ~ N(m_k, s_k^2 I) (prophrl_nn.flow_matching; s_k = std_k sqrt(|dt_k|) does not
depend on the weights), over N valid action elements per step (horizon x the robot's action dims).
FlowScale weights w_k (w_k = 1 without FlowScale) enter every log-ratio as sum_k sg(w_k) (...).

Ratio levels (`ratio_level`, chosen through RLConfig.variant; PAPER.md forms the ratio "per chunk / per
action element"):
    chunk       one ratio per chunk:  log r = sum_k w_k sum_e (log pi_theta - log pi_old)_{k,e}
                (N x K Gaussian terms, about 700 for a 10 x 7 chunk and K = 10: first-order spread ~sqrt(N)
                times that of one element's ratio, so a small step can leave the clip range)
    chunk_mean  the same, length-normalised: log r / N (a geometric mean of the element ratios, GSPO-style)
    element     one ratio per action element e:  log r_e = sum_k w_k (x_{k+1} - m_old)^2 - (x_{k+1} - m_theta)^2
                over 2 s_k^2, clipped per element, the surrogate averaged over the chunk's elements
    step        the Flow-GRPO update: one ratio per denoising step from the step's log-density AVERAGED over
                elements, log r_k = (log pi_theta - log pi_old)_k / N, the clipped objective averaged over
                steps and chunks (Flow-GRPO's per-timestep loss with gradient accumulation over timesteps);
                with FlowScale on, w_k scales step k's advantage. Flow-GRPO also clips advantages to
                +-adv_clip_max (5); group-normalised advantages are bounded by sqrt(G - 1), so that clip
                cannot bind for G <= 26 and is left out.
    L = -mean_chunks[ min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) ] + beta * KL(pi_theta || pi_ref)

KL to the reference (kl_beta): the exact Gaussian KL of the denoising path, in nats per chunk,
    KL = sum_k sum_e (m_theta - m_ref)^2 / (2 s_k^2).
Flow-GRPO averages instead (mean over elements, mean over steps) and divides by std_k^2 without |dt_k|,
so with a uniform K-step grid its term is KL / (N K^2): Flow-GRPO's beta b corresponds to
kl_beta = b / (N K^2) (kl_beta_from_flow_grpo), e.g. b = 0.04 -> 5.7e-6 for N = 70, K = 10.

Trust-region diagnostics: policy_kl is the exact KL of the rollout policy's denoising path to the current
one, sum_k sum_e (m_theta - m_old)^2 / (2 s_k^2) at the sampled states, nats per chunk (needs the rollout's
means); target_kl reads it. approx_kl_old is the k3 estimate (r - 1) - log r of the ratio the loss clips
(FlowScale-weighted, at that ratio's level), a pseudo-KL that only equals policy_kl for the unweighted chunk
ratio in expectation.

Defaults (the paper does not publish them; chosen here and exposed in config): eps_low 0.2,
eps_high 0.28 (DAPO-style asymmetric clip), beta 0 (no reference KL unless asked), FlowScale
p 0.5, alpha 0.2, w_min 0.1, w_max 10, eps 1e-8.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from prophrl_common.config_io import require_finite_numbers
from prophrl_nn.flow_matching import SamplerConfig

RATIO_LEVELS = ("chunk", "chunk_mean", "element", "step")


@dataclasses.dataclass(frozen=True)
class FlowScaleConfig:
    """FlowScale per-step weights w_k = clip((1 - alpha) w~_k / mean_j w~_j + alpha, w_min, w_max),
    w~_k = (sigma_k^2 + eps)^power, sigma_k^2 = std_k^2 |dt_k|. The paper publishes none of the values.

    enabled: False gives w_k = 1 (plain FA-GRPO).
    power: 0.5 (the paper's p), so w~_k ~ sigma_k and the expected squared gradient of every step,
        which scales like 1 / sigma_k^2, is evened out to first order.
    alpha: 0.2, the share of a uniform weight mixed in, so no step is switched off entirely (alpha = 1
        gives uniform weights, alpha = 0 pure noise-proportional weights).
    w_min, w_max: 0.1 / 10, a safety clip; with K = 10 and noise 0.7 the unclipped weights lie in
        about [0.39, 1.98], so the clip only matters for extreme schedules.
    eps: 1e-8, keeps the last (sigma ~ 0) step's raw weight finite and positive.
    """

    enabled: bool = True
    power: float = 0.5
    alpha: float = 0.2
    w_min: float = 0.1
    w_max: float = 10.0
    eps: float = 1e-8

    def __post_init__(self):
        require_finite_numbers(self, "flowscale")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"flowscale alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.w_min <= self.w_max:
            raise ValueError(f"flowscale needs 0 <= w_min <= w_max, got {self.w_min}, {self.w_max}")
        if self.eps < 0 or not math.isfinite(self.power):
            raise ValueError("flowscale needs eps >= 0 and a finite power")


@dataclasses.dataclass(frozen=True)
class FAGRPOConfig:
    """FA-GRPO loss settings (defaults chosen here; the paper does not publish them).

    group_size: 8 rollouts per initial state (G); advantages are relative within a group.
    clip_eps_low / clip_eps_high: 0.2 / 0.28, asymmetric PPO clip of the action-level ratio to
        [1 - eps_low, 1 + eps_high] (DAPO's "clip-higher": room for raising the probability of
        rare good actions, a tighter bound on lowering it).
    kl_beta: 0, no KL penalty to the SFT reference unless asked (the reference is the frozen SFT policy). It
        multiplies the exact path KL in nats per chunk; Flow-GRPO's 0.004-0.04 for images correspond to
        kl_beta_from_flow_grpo(b, N, K), about 1e-5 here (module docstring).
    advantage_eps: 1e-6 in A_i = (R_i - mean_G) / (std_G + eps); a group with equal rewards gives A = 0.
    ratio_level: "chunk" (FA-GRPO: one ratio per chunk, exp of the summed, FlowScale-weighted step
        log-likelihoods), "chunk_mean" (the same, divided by the chunk's element count), "element" (one
        ratio per action element) or "step" (Flow-GRPO's per-step ratio of element-averaged log-densities);
        see the module docstring.
    flowscale: the per-step weights, see FlowScaleConfig.
    """

    group_size: int = 8
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    kl_beta: float = 0.0
    advantage_eps: float = 1e-6
    ratio_level: str = "chunk"
    flowscale: FlowScaleConfig = FlowScaleConfig()

    def __post_init__(self):
        require_finite_numbers(self, "fa_grpo")
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {self.ratio_level!r}")
        if not (0 <= self.clip_eps_low < 1 and self.clip_eps_high >= 0):
            raise ValueError("need 0 <= clip_eps_low < 1 and clip_eps_high >= 0")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative within a group)")
        if self.kl_beta < 0 or self.advantage_eps <= 0:
            raise ValueError("need kl_beta >= 0 and advantage_eps > 0")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """rewards (num_groups, G) -> advantages (num_groups, G); a group with equal rewards gives zeros."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (num_groups, G>=2), got {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def flowscale_weights(step_variances: torch.Tensor, cfg: FlowScaleConfig) -> torch.Tensor:
    """Per-step weights (K,) from sigma_k^2 = std_k^2 |dt_k|; ones when FlowScale is off. No gradient."""
    step_variances = step_variances.detach().to(torch.float64)
    if not cfg.enabled:
        return torch.ones_like(step_variances, dtype=torch.float32)
    raw = (step_variances + cfg.eps) ** cfg.power
    weights = (1 - cfg.alpha) * raw / raw.mean() + cfg.alpha
    return weights.clamp(cfg.w_min, cfg.w_max).to(torch.float32)


def action_log_likelihood(step_log_probs: torch.Tensor, step_weights: torch.Tensor | None = None) -> torch.Tensor:
    """l = sum_k sg(w_k) log pi^(k): the log-likelihood of an emitted chunk, (B, K) -> (B,).

    Without weights this is the exact log-density of the whole denoising path (the steps are a
    Markov chain of Gaussians), i.e. of the action chunk jointly with its intermediate latents.
    """
    if step_weights is None:
        return step_log_probs.sum(dim=1)
    return (step_log_probs * step_weights.detach().to(step_log_probs)).sum(dim=1)


def kl_beta_from_flow_grpo(beta: float, elements_per_step: int, num_steps: int) -> float:
    """The kl_beta that weighs the reference KL as Flow-GRPO's `beta` does (uniform K-step grid): Flow-GRPO's
    term is this module's KL / (N K^2), see the module docstring."""
    return beta / (elements_per_step * num_steps ** 2)


def elements_per_step(means: torch.Tensor, element_mask: torch.Tensor | None = None) -> torch.Tensor:
    """N, the number of action elements that count in one denoising step of a (B, K, ...) means tensor."""
    ones = torch.ones(means.shape[2:], dtype=means.dtype, device=means.device)
    return (ones * element_mask.to(ones)).sum() if element_mask is not None else ones.sum()


def path_kl(means_p: torch.Tensor, means_q: torch.Tensor, step_stds: torch.Tensor,
            element_mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL between two denoising paths' Gaussian steps with shared stds, at the same states, summed over steps
    and valid elements: (B, K, ...) means, (K,) stds -> (B,) nats per chunk."""
    k = means_p.shape[1]
    var = (step_stds.to(means_p) ** 2).view(1, k, *([1] * (means_p.ndim - 2)))
    per_element = (means_p - means_q) ** 2 / (2 * var)
    if element_mask is not None:
        per_element = per_element * element_mask.to(per_element)
    return per_element.flatten(1).sum(dim=1)


def element_log_ratios(samples: torch.Tensor, new_means: torch.Tensor, old_means: torch.Tensor,
                       step_stds: torch.Tensor) -> torch.Tensor:
    """log pi_theta - log pi_old of every step and element of stored paths, (B, K, ...): the Gaussian steps
    share their std, so the normalisers cancel and only the squared distances to the two means remain."""
    k = samples.shape[1]
    var = (step_stds.to(samples) ** 2).view(1, k, *([1] * (samples.ndim - 2)))
    return ((samples - old_means.detach()) ** 2 - (samples - new_means) ** 2) / (2 * var)


@dataclasses.dataclass
class LossOutput:
    loss: torch.Tensor
    policy_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float
    approx_kl_old: float
    policy_kl: float = math.nan  # exact path KL rollout policy -> current, nats per chunk (nan: no rollout means)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def fa_grpo_loss(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, step_weights: torch.Tensor, cfg: FAGRPOConfig,
                 new_means: torch.Tensor | None = None, ref_means: torch.Tensor | None = None,
                 step_stds: torch.Tensor | None = None, element_mask: torch.Tensor | None = None, *,
                 samples: torch.Tensor | None = None, old_means: torch.Tensor | None = None) -> LossOutput:
    """FA-GRPO loss over a batch of chunks at cfg.ratio_level (module docstring).

    new_log_probs, old_log_probs: (B, K) per-step log-probs summed over the valid elements (new: differentiable).
    advantages: (B,) per chunk (the rollout's advantage). mask: (B,) 1 for valid chunks.
    step_weights: (K,) FlowScale weights (stop-gradient). new_means (B, K, ...) and step_stds (K,): the current
    policy's step Gaussians; ref_means / old_means: the reference's / the rollout policy's means at the same
    states; samples (B, K, ...): x_1 .. x_K of the stored paths; element_mask (broadcastable to one step's mean,
    e.g. the policy's action_mask) leaves padded action dimensions out, as they are left out of the log-probs.
    The "chunk_mean" and "step" levels need new_means (for N), "element" also samples, old_means and step_stds,
    kl_beta > 0 ref_means and step_stds; policy_kl is reported where old_means are given.
    """
    if new_log_probs.shape != old_log_probs.shape or new_log_probs.ndim != 2:
        raise ValueError(f"log-prob shapes differ or are not (B, K): {tuple(new_log_probs.shape)} vs "
                         f"{tuple(old_log_probs.shape)}")
    b, k = new_log_probs.shape
    if advantages.shape != (b,) or mask.shape != (b,) or step_weights.shape != (k,):
        raise ValueError("advantages and mask must be (B,), step_weights (K,)")
    level = cfg.ratio_level
    if level in ("chunk_mean", "step", "element") and new_means is None:
        raise ValueError(f"ratio_level {level!r} needs new_means (the element count per step)")
    if level == "element" and (samples is None or old_means is None or step_stds is None):
        raise ValueError("ratio_level 'element' needs samples, old_means and step_stds")
    w = step_weights.detach().to(new_log_probs)
    mask = mask.to(new_log_probs)
    old = old_log_probs.detach()
    adv = advantages.detach().to(new_log_probs)
    low, high = 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high
    elements = elements_per_step(new_means, element_mask) if new_means is not None else None

    if level in ("chunk", "chunk_mean"):
        log_ratio = action_log_likelihood(new_log_probs - old, w)        # (B,)
        if level == "chunk_mean":
            log_ratio = log_ratio / elements
        ratio = torch.exp(log_ratio)
        surrogate = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
        clipped = ((ratio < low) | (ratio > high)).to(mask)
        pseudo_kl = (ratio - 1) - log_ratio
    elif level == "element":
        per_step = element_log_ratios(samples, new_means, old_means, step_stds)   # (B, K, ...)
        log_ratio = (per_step * w.view(1, k, *([1] * (per_step.ndim - 2)))).sum(dim=1)  # (B, ...)
        valid = torch.ones_like(log_ratio) if element_mask is None else \
            torch.ones_like(log_ratio) * element_mask.to(log_ratio)
        ratio = torch.exp(log_ratio)
        element_adv = adv.view(b, *([1] * (ratio.ndim - 1)))
        per_chunk = (lambda x: (x * valid).flatten(1).sum(dim=1) / valid.flatten(1).sum(dim=1).clamp(min=1))
        surrogate = per_chunk(torch.minimum(ratio * element_adv, ratio.clamp(low, high) * element_adv))
        clipped = per_chunk(((ratio < low) | (ratio > high)).to(ratio))
        pseudo_kl = per_chunk((ratio - 1) - log_ratio)
        ratio = per_chunk(ratio)
    else:  # step
        log_ratio = (new_log_probs - old) / elements                     # (B, K)
        ratio = torch.exp(log_ratio)
        step_adv = adv[:, None] * w[None, :]
        surrogate = torch.minimum(ratio * step_adv, ratio.clamp(low, high) * step_adv).mean(dim=1)
        clipped = ((ratio < low) | (ratio > high)).to(mask).mean(dim=1)
        pseudo_kl = ((ratio - 1) - log_ratio).mean(dim=1)
        ratio = ratio.mean(dim=1)
    policy_loss = -_masked_mean(surrogate, mask)

    kl = torch.zeros((), dtype=new_log_probs.dtype, device=new_log_probs.device)
    if cfg.kl_beta > 0:
        if new_means is None or ref_means is None or step_stds is None:
            raise ValueError("kl_beta > 0 needs new_means, ref_means and step_stds")
        kl = _masked_mean(path_kl(new_means, ref_means.detach(), step_stds, element_mask), mask)
    policy_kl = math.nan
    if old_means is not None and new_means is not None and step_stds is not None:
        with torch.no_grad():
            policy_kl = _masked_mean(path_kl(new_means, old_means, step_stds, element_mask), mask).item()
    loss = policy_loss + cfg.kl_beta * kl
    return LossOutput(loss, policy_loss.item(), kl.item(), _masked_mean(clipped, mask).item(),
                      _masked_mean(ratio.detach(), mask).item(), _masked_mean(pseudo_kl.detach(), mask).item(),
                      policy_kl)


@dataclasses.dataclass
class RolloutBatch:
    """Every executed action chunk of a set of groups, flattened to B chunks.

    obs must support indexing with a LongTensor (a tensor, or prophrl_policy's Observation).
    latents (B, K+1, ...), old_log_probs (B, K) and old_means (B, K, ...) come from the SDE sampler at rollout
    time; old_means are needed by the "element" ratio and for policy_kl (and so target_kl).
    """

    obs: object
    latents: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    old_means: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.latents.shape[0]


def policy_update(policy, optimizer: torch.optim.Optimizer, batch: RolloutBatch, cfg: FAGRPOConfig,
                  sampler: SamplerConfig, epochs: int = 1,
                  minibatch_size: int | None = None, max_grad_norm: float = 1.0, ref_policy=None,
                  generator: torch.Generator | None = None, skip_empty: bool = True,
                  target_kl: float = 0.0, step_variances: torch.Tensor | None = None) -> dict[str, float]:
    """PPO-style epochs of FA-GRPO over a rollout batch sampled with `sampler`. The policy provides
    `sde_log_probs(obs, latents, sampler) -> (log_probs (B,K), means, stds (K,))` and optionally
    `action_mask` (the action dimensions that count; padding is left out of the KL).

    step_variances: the per-step variances FlowScale weights by (default: the sampler's).
    skip_empty: skip minibatches whose chunks are all masked. Data-parallel training must pass False:
    every rank has to run the same number of backward passes (a masked minibatch gives zero gradient).
    target_kl: > 0 ends the update (no step on that minibatch, no further epochs) once a minibatch's KL to the
    rollout policy exceeds 1.5 * target_kl (Stable-Baselines3's rule): policy_kl, the exact path KL in nats per
    chunk, when the batch has old_means, else the pseudo-KL approx_kl_old. The chunk ratio sums log-densities over
    every step and action element, so one optimiser step can leave the trust region; under torch.distributed
    the largest KL over the ranks decides, so every rank stops at the same minibatch.
    """
    if cfg.kl_beta > 0 and ref_policy is None:
        raise ValueError("kl_beta > 0 needs a reference policy")
    weights = flowscale_weights(sampler.step_noise_variance() if step_variances is None else step_variances,
                                cfg.flowscale)
    element_mask = getattr(policy, "action_mask", None)
    size = batch.size
    minibatch_size = minibatch_size or size
    totals: dict[str, float] = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0,
                                "ratio_mean": 0.0, "approx_kl_old": 0.0, "policy_kl": 0.0, "grad_norm": 0.0}
    count, stopped = 0, False
    all_ref_means = None
    if cfg.kl_beta > 0:  # the reference policy does not change: its means once per update, not per epoch
        with torch.no_grad():
            all_ref_means = torch.cat([ref_policy.sde_log_probs(batch.obs[idx], batch.latents[idx], sampler)[1]
                                       for idx in torch.arange(size).split(minibatch_size)])
    policy.train()
    for _ in range(epochs):
        if stopped:
            break
        order = torch.randperm(size, generator=generator)
        for idx in order.split(minibatch_size):
            if skip_empty and batch.mask[idx].sum() == 0:
                continue
            obs = batch.obs[idx]
            latents = batch.latents[idx]
            new_log_probs, new_means, stds = policy.sde_log_probs(obs, latents, sampler)
            ref_means = all_ref_means[idx] if all_ref_means is not None else None
            old_means = batch.old_means[idx] if batch.old_means is not None else None
            out = fa_grpo_loss(new_log_probs, batch.old_log_probs[idx], batch.advantages[idx], batch.mask[idx],
                               weights, cfg, new_means, ref_means, stds, element_mask,
                               samples=latents[:, 1:], old_means=old_means)
            trust_kl = out.policy_kl if old_means is not None else out.approx_kl_old
            if target_kl > 0 and _largest_over_ranks(trust_kl) > 1.5 * target_kl:
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                       max_grad_norm)
            optimizer.step()
            for key, value in (("loss", out.loss.item()), ("policy_loss", out.policy_loss), ("kl", out.kl),
                               ("clip_fraction", out.clip_fraction), ("ratio_mean", out.ratio_mean),
                               ("approx_kl_old", out.approx_kl_old), ("policy_kl", out.policy_kl),
                               ("grad_norm", float(grad_norm))):
                totals[key] += value
            count += 1
    if batch.old_means is None:
        del totals["policy_kl"]
    return {k: v / max(count, 1) for k, v in totals.items()} | {"minibatches": count, "stopped_early": float(stopped)}


def _largest_over_ranks(value: float) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor.item())
    return value
