import copy
import math

import pytest
import torch

from prophrl_nn import flow_matching as fm
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_trainer.fa_grpo import (FAGRPOConfig, FlowScaleConfig, RolloutBatch, element_log_ratios, fa_grpo_loss,
                                     flowscale_weights, group_advantages, kl_beta_from_flow_grpo, path_kl,
                                     policy_update)
from prophrl_trainer.toy import ContextualBandit, ExploitableReward, ToyFlowPolicy


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), eps=0.0 + 1e-12)
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.all(adv[1] == 0), "a group whose rollouts all scored the same carries no signal"
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4))


def test_flowscale_weights_by_hand():
    variances = torch.tensor([4.0, 1.0, 0.25, 0.0625])
    cfg = FlowScaleConfig(power=0.5, alpha=0.2, w_min=0.5, w_max=10.0, eps=0.0)
    raw = torch.tensor([2.0, 1.0, 0.5, 0.25])
    expected = (0.8 * raw / raw.mean() + 0.2).clamp(0.5, 10.0)
    torch.testing.assert_close(flowscale_weights(variances, cfg), expected)
    assert flowscale_weights(variances, cfg)[-1] == 0.5  # clipped at w_min
    torch.testing.assert_close(flowscale_weights(variances, FlowScaleConfig(enabled=False)), torch.ones(4))
    # the real schedule: high-noise early steps get the larger weights
    weights = flowscale_weights(fm.step_noise_variance(10, 0.7), FlowScaleConfig())
    assert weights[0] > weights[-1] and not weights.requires_grad


def test_fa_grpo_loss_by_hand_with_asymmetric_clipping():
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.1, 0.0], [-0.3, 0.0]], requires_grad=True)
    cfg = FAGRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28, flowscale=FlowScaleConfig(enabled=False))
    out = fa_grpo_loss(new, old, torch.tensor([1.0, -1.0]), torch.ones(2), torch.ones(2), cfg)
    r1 = math.exp(0.1)  # inside the clip range: unclipped
    expected = -(r1 * 1.0 + 0.8 * -1.0) / 2  # r2 = e^-0.3 < 0.8 with A < 0: the clipped (pessimistic) term
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.clip_fraction == pytest.approx(0.5)
    out.loss.backward()
    assert new.grad[1].abs().sum() == 0, "a clipped chunk gives no gradient"
    assert new.grad[0, 0].item() == pytest.approx(-r1 / 2, rel=1e-6)
    # the ratio is formed at the action level: a +0.1 and -0.1 split over two steps cancels
    balanced = fa_grpo_loss(torch.tensor([[0.1, -0.1]]), torch.zeros(1, 2), torch.ones(1), torch.ones(1),
                            torch.ones(2), cfg)
    assert balanced.ratio_mean == pytest.approx(1.0)


def test_masked_chunks_contribute_nothing():
    cfg = FAGRPOConfig()
    new = torch.randn(4, 3, requires_grad=True)
    old = torch.randn(4, 3)
    adv = torch.randn(4)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    full = fa_grpo_loss(new, old, adv, mask, torch.ones(3), cfg)
    full.loss.backward()
    assert new.grad[2:].abs().sum() == 0
    only_valid = fa_grpo_loss(new[:2], old[:2], adv[:2], torch.ones(2), torch.ones(3), cfg)
    assert full.loss.item() == pytest.approx(only_valid.loss.item())


def test_step_level_ablation_and_kl_term():
    cfg = FAGRPOConfig(ratio_level="step", kl_beta=0.5, flowscale=FlowScaleConfig(enabled=False))
    new = torch.tensor([[0.1, -0.1]])
    out = fa_grpo_loss(new, torch.zeros(1, 2), torch.ones(1), torch.ones(1), torch.ones(2), cfg,
                       new_means=torch.tensor([[[1.0], [0.0]]]), ref_means=torch.zeros(1, 2, 1),
                       step_stds=torch.tensor([1.0, 2.0]))
    policy_term = -(math.exp(0.1) + math.exp(-0.1)) / 2
    assert out.policy_loss == pytest.approx(policy_term, rel=1e-6)
    assert out.kl == pytest.approx(0.5)  # (1 - 0)^2 / (2 * 1^2)
    assert out.loss.item() == pytest.approx(policy_term + 0.25, rel=1e-6)
    with pytest.raises(ValueError, match="ratio_level"):
        FAGRPOConfig(ratio_level="token")


def test_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    cfg = FAGRPOConfig(clip_eps_low=0.5, clip_eps_high=0.5, flowscale=FlowScaleConfig(enabled=False))
    weights = torch.tensor([1.5, 0.7, 1.0], dtype=torch.float64)
    old = torch.randn(5, 3, dtype=torch.float64) * 0.05
    adv = torch.randn(5, dtype=torch.float64)
    new = (old + torch.randn(5, 3, dtype=torch.float64) * 0.05).requires_grad_(True)
    f = lambda x: fa_grpo_loss(x, old, adv, torch.ones(5, dtype=torch.float64), weights, cfg).loss  # noqa: E731
    assert torch.autograd.gradcheck(f, (new,), eps=1e-6, atol=1e-6)


class _SummedLogLikelihood(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, context, latents):
        return self.policy.sde_log_probs(context, latents, SamplerConfig(3, 0.7))[0].sum()


def test_summed_log_likelihood_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = _SummedLogLikelihood(ToyFlowPolicy(hidden=8).double())
    context = torch.rand(3, 2, dtype=torch.float64)
    latents = torch.randn(3, 4, 2, 2, dtype=torch.float64)  # a stored 3-step denoising path
    weight = model.policy.net[4].weight.detach().clone().requires_grad_(True)
    f = lambda w: torch.func.functional_call(model, {"policy.net.4.weight": w}, (context, latents))  # noqa: E731
    assert torch.autograd.gradcheck(f, (weight,), eps=1e-6, atol=1e-5)


def _train_bandit(flowscale: bool, updates: int = 30, seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    env = ContextualBandit(width=0.5)
    policy = ToyFlowPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    cfg = FAGRPOConfig(group_size=8, flowscale=FlowScaleConfig(enabled=flowscale))
    sampler = SamplerConfig(num_steps=6, noise_level=0.7)
    curve = []
    for _ in range(updates):
        contexts = env.sample_contexts(16, g).repeat_interleave(cfg.group_size, 0)
        sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler, generator=g)
        rewards = env.reward(contexts, sample.actions)
        curve.append(rewards.mean().item())
        adv = group_advantages(rewards.view(-1, cfg.group_size)).flatten()
        batch = RolloutBatch(contexts, sample.latents, sample.log_probs, adv, torch.ones_like(adv))
        policy_update(policy, opt, batch, cfg, sampler, epochs=2, minibatch_size=64, generator=g)
    with torch.no_grad():
        contexts = env.sample_contexts(512, g)
        final = env.reward(contexts, policy.predict_action_chunk(contexts, mode="ode", sampler=sampler,
                                                                  generator=g).actions).mean().item()
    return curve, final


@pytest.mark.parametrize("flowscale", [False, True], ids=["fa_grpo", "fa_grpo+flowscale"])
def test_fa_grpo_raises_reward_on_a_contextual_bandit(flowscale):
    curve, final = _train_bandit(flowscale)
    start = sum(curve[:3]) / 3
    assert start < 0.2 and final > start + 0.4, (start, final, curve)


# ----- additions: FlowScale inside the action-level ratio, the real policy's summed log-likelihood -----

def test_flowscale_weights_enter_the_action_level_log_ratio_by_hand():
    from prophrl_trainer.fa_grpo import action_log_likelihood

    cfg = FAGRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28)
    weights = torch.tensor([2.0, 0.5])
    new = torch.tensor([[0.1, 0.2], [0.05, -0.1]], requires_grad=True)
    torch.testing.assert_close(action_log_likelihood(new.detach(), weights), torch.tensor([0.3, 0.05]))
    out = fa_grpo_loss(new, torch.zeros(2, 2), torch.tensor([1.0, 2.0]), torch.ones(2), weights, cfg)
    # chunk 0: l = 2*0.1 + 0.5*0.2 = 0.3, r = e^0.3 = 1.35 > 1.28 with A > 0 -> clipped at 1.28 (no gradient)
    # chunk 1: l = 2*0.05 - 0.5*0.1 = 0.05, r = e^0.05, inside the range
    expected = -(1.28 * 1.0 + math.exp(0.05) * 2.0) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert new.grad[0].abs().sum() == 0
    # d/dnew[1,k] = -(A r w_k) / 2
    torch.testing.assert_close(new.grad[1], -2.0 * math.exp(0.05) * weights / 2)


def test_kl_leaves_padded_action_dimensions_out():
    cfg = FAGRPOConfig(kl_beta=1.0, flowscale=FlowScaleConfig(enabled=False))
    new_means = torch.ones(1, 1, 2, 3)       # (B, K, H, A): every element 1 away from the reference
    element_mask = torch.tensor([1.0, 1.0, 0.0])  # the third dimension is padding
    out = fa_grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1), torch.ones(1), cfg,
                       new_means, torch.zeros(1, 1, 2, 3), torch.tensor([0.5]), element_mask)
    assert out.kl == pytest.approx(2 * 2 * 1.0 / (2 * 0.25))   # 4 counted elements, 1^2 / (2 * 0.5^2)


@pytest.mark.parametrize("kwargs, match", [({"alpha": 1.5}, "alpha"), ({"w_min": 2.0, "w_max": 1.0}, "w_min"),
                                           ({"eps": -1.0}, "eps")])
def test_flowscale_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowScaleConfig(**kwargs)


def _tiny_vla(seed=0):
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import Observation, VLAPolicy

    torch.manual_seed(seed)
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=4))
    with torch.no_grad():  # a non-trivial velocity field (the output layer starts at zero)
        policy.action_out[1].weight.normal_(0, 0.3)
        policy.action_out[1].bias.normal_(0, 0.3)
    g = torch.Generator().manual_seed(seed)
    obs = Observation(torch.rand(3, 3, 32, 32, generator=g), ["push left", "lift", "open"],
                      torch.randn(3, 8, generator=g))
    return policy, obs, g


def test_vla_action_log_likelihood_is_the_gaussian_density_of_the_denoising_path():
    policy, obs, g = _tiny_vla()
    sampler = SamplerConfig(num_steps=5, noise_level=0.7)
    sample = policy.predict_action_chunk(obs, mode="sde", sampler=sampler, generator=g)
    log_probs, means, stds = policy.sde_log_probs(obs, sample.latents, sampler)
    # recomputed under the same weights = what the sampler recorded (ratio 1 before any update)
    torch.testing.assert_close(log_probs, sample.log_probs, rtol=1e-5, atol=1e-3)
    # by hand with torch.distributions over the robot's 7 dimensions only (the padding carries nothing)
    robot = policy.config.robot_action_dim
    expected = torch.zeros(3)
    for k in range(5):
        dist = torch.distributions.Normal(means[:, k, :, :robot], stds[k])
        expected += dist.log_prob(sample.latents[:, k + 1, :, :robot]).flatten(1).sum(1)
    torch.testing.assert_close(log_probs.sum(1), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stds ** 2, fm.step_noise_variance(5, 0.7).float(), rtol=1e-5, atol=1e-7)


def test_vla_summed_log_likelihood_gradient_matches_central_differences():
    """Directional derivative of sum_k log pi^(k) w.r.t. the velocity head and a denoiser layer, in float32
    (the policy runs in float32 only), against central differences."""
    policy, obs, g = _tiny_vla(1)
    sampler = SamplerConfig(num_steps=3, noise_level=0.7)
    sample = policy.predict_action_chunk(obs, mode="sde", sampler=sampler, generator=g)
    params = [policy.action_out[1].weight, policy.denoiser.layers[0].linear1.weight]
    f = lambda: policy.sde_log_probs(obs, sample.latents, sampler)[0].sum()  # noqa: E731
    policy.zero_grad()
    f().backward()
    directions = [torch.randn(p.shape, generator=g) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, directions)).item()
    h = 1e-3
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(h * d)
        plus = f().item()
        for p, d in zip(params, directions):
            p.sub_(2 * h * d)
        minus = f().item()
        for p, d in zip(params, directions):
            p.add_(h * d)
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic) > 1.0, "the check needs a non-trivial gradient"
    assert numeric == pytest.approx(analytic, rel=2e-2), (numeric, analytic)


def test_masked_minibatches_still_step_when_not_skipped():
    """Data-parallel ranks must run the same number of backward passes: with skip_empty=False an all-masked
    minibatch is processed and leaves the weights unchanged (zero gradient, no weight decay)."""
    torch.manual_seed(0)
    policy = ToyFlowPolicy(hidden=8)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    contexts = torch.rand(4, 2)
    sampler = SamplerConfig(num_steps=3)
    sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler)
    batch = RolloutBatch(contexts, sample.latents, sample.log_probs, torch.randn(4), torch.zeros(4))
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = FAGRPOConfig(group_size=2)
    assert policy_update(policy, opt, batch, cfg, sampler, minibatch_size=2)["minibatches"] == 0
    stats = policy_update(policy, opt, batch, cfg, sampler, minibatch_size=2, skip_empty=False)
    assert stats["minibatches"] == 2
    for p, b in zip(policy.parameters(), before):
        torch.testing.assert_close(p, b)


def test_target_kl_ends_the_update_once_the_policy_leaves_the_trust_region():
    torch.manual_seed(0)
    env, cfg = ContextualBandit(), FAGRPOConfig(group_size=8)
    sampler = SamplerConfig(num_steps=4)

    def update(target_kl):
        torch.manual_seed(0)
        policy = ToyFlowPolicy()
        contexts = env.sample_contexts(64)
        sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler)
        adv = group_advantages(env.reward(contexts, sample.actions).view(-1, 8)).flatten()
        batch = RolloutBatch(contexts, sample.latents, sample.log_probs, adv, torch.ones(64))
        opt = torch.optim.AdamW(policy.parameters(), lr=0.05)   # far too large: the first step leaves the region
        return policy_update(policy, opt, batch, cfg, sampler, epochs=4, minibatch_size=16,
                             generator=torch.Generator().manual_seed(0), target_kl=target_kl)

    free = update(0.0)
    assert free["minibatches"] == 16 and free["stopped_early"] == 0 and free["approx_kl_old"] > 0.5
    bounded = update(0.05)
    # the first minibatch is on-policy (KL 0) and always steps; the stop comes within the first epoch
    assert 1 <= bounded["minibatches"] < 4 and bounded["stopped_early"] == 1
    assert bounded["approx_kl_old"] <= 1.5 * 0.05


# ----- ratio levels, the KL's scale, the policy KL that target_kl reads -----

def _gaussian_paths(b=3, k=4, h=2, a=3, seed=0, dtype=torch.float64):
    """Stored SDE paths with the rollout policy's means, a moved policy's means and the step stds."""
    g = torch.Generator().manual_seed(seed)
    stds = torch.linspace(0.5, 0.1, k, dtype=dtype)
    old_means = torch.randn(b, k, h, a, generator=g, dtype=dtype)
    samples = old_means + stds.view(1, k, 1, 1) * torch.randn(b, k, h, a, generator=g, dtype=dtype)
    new_means = old_means + 0.05 * torch.randn(b, k, h, a, generator=g, dtype=dtype)
    return samples, old_means, new_means, stds


def _log_probs(samples, means, stds, element_mask=None):
    return torch.stack([fm.gaussian_log_prob(samples[:, j], means[:, j], stds[j], element_mask)
                        for j in range(samples.shape[1])], dim=1)


def test_element_log_ratios_are_the_gaussian_log_density_differences_and_sum_to_the_step_ratio():
    samples, old_means, new_means, stds = _gaussian_paths()
    per_element = element_log_ratios(samples, new_means, old_means, stds)
    normal = lambda m: torch.distributions.Normal(m, stds.view(1, -1, 1, 1))  # noqa: E731
    torch.testing.assert_close(per_element, normal(new_means).log_prob(samples) - normal(old_means).log_prob(samples))
    torch.testing.assert_close(per_element.flatten(2).sum(-1),
                               _log_probs(samples, new_means, stds) - _log_probs(samples, old_means, stds))


@pytest.mark.parametrize("level", ["chunk", "chunk_mean", "element", "step"])
def test_every_ratio_level_by_hand(level):
    """Each level's loss, clip fraction and mean ratio computed independently from the Gaussian densities."""
    samples, old_means, new_means, stds = _gaussian_paths(b=4, k=3, h=2, a=3, seed=1)
    new_means = new_means.clone().requires_grad_(True)
    element_mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)   # the last action dim is padding
    new_lp = _log_probs(samples, new_means, stds, element_mask)
    old_lp = _log_probs(samples, old_means, stds, element_mask)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    w = torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64)
    cfg = FAGRPOConfig(ratio_level=level, clip_eps_low=0.01, clip_eps_high=0.02)
    out = fa_grpo_loss(new_lp, old_lp, adv, torch.ones(4), w, cfg, new_means, None, stds, element_mask,
                       samples=samples, old_means=old_means)

    d = (torch.distributions.Normal(new_means, stds.view(1, -1, 1, 1)).log_prob(samples)
         - torch.distributions.Normal(old_means, stds.view(1, -1, 1, 1)).log_prob(samples))[..., :2].detach()
    n = 2 * 2  # horizon x valid action dims

    def clipped_objective(r, a):
        return torch.minimum(r * a, r.clamp(0.99, 1.02) * a), ((r < 0.99) | (r > 1.02)).double()

    if level in ("chunk", "chunk_mean"):
        log_r = (d.sum(dim=(2, 3)) * w).sum(1) / (n if level == "chunk_mean" else 1)
        r = log_r.exp()
        obj, clip = clipped_objective(r, adv)
    elif level == "element":
        r = (d * w.view(1, -1, 1, 1)).sum(1).exp()                         # (B, H, 2)
        obj, clip = clipped_objective(r, adv.view(-1, 1, 1))
        obj, clip, r = obj.mean(dim=(1, 2)), clip.mean(dim=(1, 2)), r.mean(dim=(1, 2))
    else:
        r = (d.mean(dim=(2, 3))).exp()                                     # (B, K): element-averaged log-densities
        obj, clip = clipped_objective(r, adv[:, None] * w[None])
        obj, clip, r = obj.mean(1), clip.mean(1), r.mean(1)
    assert out.policy_loss == pytest.approx(-obj.mean().item(), rel=1e-9)
    assert out.clip_fraction == pytest.approx(clip.mean().item())
    assert out.ratio_mean == pytest.approx(r.mean().item(), rel=1e-9)
    assert out.policy_kl == pytest.approx(path_kl(new_means.detach(), old_means, stds, element_mask).mean().item())
    out.loss.backward()
    assert new_means.grad[..., 2].abs().sum() == 0, "padded action dimensions get no gradient"


def test_the_element_ratio_is_far_less_spread_than_the_chunk_ratio():
    """One small change of the means: the chunk's log-ratio sums N x K terms, an element's only K."""
    samples, old_means, new_means, stds = _gaussian_paths(b=256, k=10, h=10, a=7, seed=2)
    per_element = element_log_ratios(samples, new_means, old_means, stds)
    chunk_spread = per_element.sum(dim=(1, 2, 3)).std()
    element_spread = per_element.sum(dim=1).std()
    assert chunk_spread > 5 * element_spread   # ~sqrt(70) = 8.4 for independent elements


def test_the_reference_kl_is_the_exact_path_kl_and_converts_to_flow_grpos_beta():
    samples, ref_means, new_means, stds = _gaussian_paths(b=2, k=5, h=10, a=7, seed=3)
    cfg = FAGRPOConfig(kl_beta=1.0)
    zeros = torch.zeros(2, 5, dtype=torch.float64)
    out = fa_grpo_loss(zeros, zeros, torch.zeros(2), torch.ones(2), torch.ones(5), cfg, new_means, ref_means, stds)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(new_means, stds.view(1, -1, 1, 1)),
                                              torch.distributions.Normal(ref_means, stds.view(1, -1, 1, 1)))
    assert out.kl == pytest.approx(exact.sum(dim=(1, 2, 3)).mean().item(), rel=1e-9)
    # Flow-GRPO: per step ((m - m_ref)^2).mean(elements) / (2 std_dev_t^2) with std_dev_t = s_k / sqrt(|dt|),
    # averaged over steps and chunks (uniform grid: |dt| = 1 / K)
    dt = 1 / 5
    std_dev_t = stds / math.sqrt(dt)
    flow_grpo_kl = (((new_means - ref_means) ** 2).mean(dim=(2, 3)) / (2 * std_dev_t ** 2)).mean()
    assert out.kl * kl_beta_from_flow_grpo(1.0, 70, 5) == pytest.approx(flow_grpo_kl.item(), rel=1e-9)


def test_the_step_level_is_flow_grpos_per_timestep_update_on_fixed_tensors():
    """flow_grpo: per timestep j, log_prob = the step's Gaussian log-density averaged over elements, ratio =
    exp(log_prob - old), policy_loss = mean(max(-A r, -A clip(r))), gradients accumulated over the timesteps
    (so averaged over them)."""
    samples, old_means, new_means, stds = _gaussian_paths(b=4, k=3, h=2, a=2, seed=4)
    new_means = new_means.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    clip_range = 1e-2
    reference = 0.0
    for j in range(3):
        log_prob = torch.distributions.Normal(new_means[:, j], stds[j]).log_prob(samples[:, j]).mean(dim=(1, 2))
        old = torch.distributions.Normal(old_means[:, j], stds[j]).log_prob(samples[:, j]).mean(dim=(1, 2))
        ratio = torch.exp(log_prob - old)
        reference = reference + torch.mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range,
                                                                                            1 + clip_range))) / 3
    expected_grad, = torch.autograd.grad(reference, new_means)
    cfg = FAGRPOConfig(ratio_level="step", clip_eps_low=clip_range, clip_eps_high=clip_range,
                       flowscale=FlowScaleConfig(enabled=False))
    out = fa_grpo_loss(_log_probs(samples, new_means, stds), _log_probs(samples, old_means, stds), adv,
                       torch.ones(4), torch.ones(3, dtype=torch.float64), cfg, new_means, step_stds=stds)
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-9)
    grad, = torch.autograd.grad(out.loss, new_means)
    torch.testing.assert_close(grad, expected_grad)


def test_target_kl_reads_the_policy_kl_not_the_flowscale_weighted_pseudo_kl():
    """With FlowScale weights that all but switch the last step off, a rollout policy that differed from the
    current one only in that step has a near-zero weighted pseudo-KL but a large true KL: target_kl must stop
    the update before its first step."""
    torch.manual_seed(0)
    policy = ToyFlowPolicy(hidden=16)
    contexts = torch.rand(32, 2)
    sampler = SamplerConfig(num_steps=4)
    sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler)
    old_means = sample.means.clone()
    old_means[:, -1] += 0.5 * sample.stds[-1]        # per element KL 0.125 at the last step, 0.5 per chunk
    old_log_probs = _log_probs(sample.latents[:, 1:], old_means, sample.stds)
    variances = torch.tensor([1.0, 1.0, 1.0, 1e-12])
    cfg = FAGRPOConfig(group_size=2, flowscale=FlowScaleConfig(alpha=0.0, power=1.0, w_min=1e-9))
    assert flowscale_weights(variances, cfg.flowscale)[-1] < 1e-6

    def update(means):
        batch = RolloutBatch(contexts, sample.latents, old_log_probs, torch.randn(32), torch.ones(32), means)
        return policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), batch, cfg, sampler,
                             target_kl=0.01, step_variances=variances)

    without_means = update(None)      # only the pseudo-KL to go by: it sees nothing
    assert without_means["stopped_early"] == 0 and without_means["approx_kl_old"] < 1e-6
    with_means = update(old_means)
    assert with_means["stopped_early"] == 1 and with_means["minibatches"] == 0


def test_the_kl_anchor_pairs_every_chunk_with_its_own_reference_means_over_shuffled_minibatches():
    """The reference policy's means are computed once per update; each minibatch (a random order, two epochs)
    must still compare every chunk with its own: the mean KL equals the whole batch's at lr 0."""
    torch.manual_seed(0)
    policy, reference = ToyFlowPolicy(hidden=8), ToyFlowPolicy(hidden=8).requires_grad_(False)
    contexts = torch.rand(32, 2)
    sampler = SamplerConfig(num_steps=4)
    sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler)
    cfg = FAGRPOConfig(group_size=4, kl_beta=1.0)
    batch = RolloutBatch(contexts, sample.latents, sample.log_probs, torch.randn(32), torch.ones(32), sample.means)
    stats = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), batch, cfg, sampler, epochs=2,
                          minibatch_size=8, ref_policy=reference, generator=torch.Generator().manual_seed(3))
    _, ref_means, stds = reference.sde_log_probs(contexts, sample.latents, sampler)
    whole = fa_grpo_loss(sample.log_probs, sample.log_probs, batch.advantages, batch.mask,
                         flowscale_weights(sampler.step_noise_variance(), cfg.flowscale), cfg, sample.means,
                         ref_means, stds, samples=sample.latents[:, 1:], old_means=sample.means)
    assert stats["minibatches"] == 8 and whole.kl > 1e-3
    assert stats["kl"] == pytest.approx(whole.kl, rel=1e-6)


def test_rollout_means_are_the_means_sde_log_probs_recomputes():
    """policy_kl compares the stored rollout means with the recomputed ones: on-policy they agree exactly."""
    torch.manual_seed(0)
    policy = ToyFlowPolicy(hidden=8)
    contexts = torch.rand(6, 2)
    sampler = SamplerConfig(num_steps=5)
    sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler)
    log_probs, means, stds = policy.sde_log_probs(contexts, sample.latents, sampler)
    torch.testing.assert_close(means, sample.means)
    torch.testing.assert_close(log_probs, sample.log_probs)
    assert path_kl(means, sample.means, stds).abs().max() < 1e-9


# ----- the exploitation guard: a KL anchor to the SFT policy on a reward with an exploitable error -----

def _sft_on_demonstrations(model: ExploitableReward, steps: int = 400, seed: int = 0) -> ToyFlowPolicy:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    policy = ToyFlowPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        contexts, actions = model.sample_demonstrations(256, policy.horizon, generator=g)
        loss = policy.compute_loss(contexts, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def _true_and_learned_reward(policy, model: ExploitableReward, sampler: SamplerConfig) -> tuple[float, float]:
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        contexts = model.env.sample_contexts(512, g)
        actions = policy.predict_action_chunk(contexts, mode="ode", sampler=sampler, generator=g).actions
        return model.env.reward(contexts, actions).mean().item(), model.reward(contexts, actions).mean().item()


def _rl_on_learned_reward(sft: ToyFlowPolicy, model: ExploitableReward, kl_beta: float, seed: int,
                          updates: int = 30) -> ToyFlowPolicy:
    """FA-GRPO + FlowScale trained only on the learned reward, from the SFT policy."""
    policy = copy.deepcopy(sft)
    reference = copy.deepcopy(sft).requires_grad_(False)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    cfg = FAGRPOConfig(group_size=8, kl_beta=kl_beta)
    sampler = SamplerConfig(num_steps=6, noise_level=0.7)
    for _ in range(updates):
        contexts = model.env.sample_contexts(16, g).repeat_interleave(cfg.group_size, 0)
        sample = policy.predict_action_chunk(contexts, mode="sde", sampler=sampler, generator=g)
        adv = group_advantages(model.reward(contexts, sample.actions).view(-1, cfg.group_size)).flatten()
        batch = RolloutBatch(contexts, sample.latents, sample.log_probs, adv, torch.ones_like(adv), sample.means)
        policy_update(policy, opt, batch, cfg, sampler, epochs=2, minibatch_size=64, generator=g,
                      ref_policy=reference if kl_beta > 0 else None)
    return policy


@pytest.mark.parametrize("seed", [1, 2])
def test_a_kl_anchor_to_the_sft_policy_keeps_rl_from_exploiting_the_learned_rewards_error(seed):
    model = ExploitableReward(ContextualBandit(width=0.3))
    sampler = SamplerConfig(num_steps=6, noise_level=0.7)
    sft = _sft_on_demonstrations(model)
    sft_true, sft_learned = _true_and_learned_reward(sft, model, sampler)
    assert sft_true > 0.8, "SFT on the demonstrations reaches the true target"

    free_true, free_learned = _true_and_learned_reward(_rl_on_learned_reward(sft, model, 0.0, seed), model, sampler)
    assert free_learned > sft_learned + 0.5 and free_true < 0.2 * sft_true, \
        f"unguarded RL exploits the error: learned reward {sft_learned:.2f} -> {free_learned:.2f}, " \
        f"true {sft_true:.2f} -> {free_true:.2f}"

    anchored_true, _ = _true_and_learned_reward(_rl_on_learned_reward(sft, model, 0.1, seed), model, sampler)
    assert anchored_true > 0.9 * sft_true, f"the KL anchor holds the true reward: {sft_true:.2f} -> {anchored_true:.2f}"
