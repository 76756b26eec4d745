import math

import pytest
import torch

from prophrl_policy import flow_matching as fm
from prophrl_trainer.fa_grpo import (FAGRPOConfig, FlowScaleConfig, RolloutBatch, fa_grpo_loss, flowscale_weights,
                                     group_advantages, policy_update)
from prophrl_trainer.toy import ContextualBandit, ToyFlowPolicy


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
        return self.policy.sde_log_probs(context, latents, 0.7)[0].sum()


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
    steps, noise = 6, 0.7
    variances = fm.step_noise_variance(steps, noise)
    curve = []
    for _ in range(updates):
        contexts = env.sample_contexts(16, g).repeat_interleave(cfg.group_size, 0)
        sample = policy.predict_action_chunk(contexts, mode="sde", num_steps=steps, noise_level=noise, generator=g)
        rewards = env.reward(contexts, sample.actions)
        curve.append(rewards.mean().item())
        adv = group_advantages(rewards.view(-1, cfg.group_size)).flatten()
        batch = RolloutBatch(contexts, sample.latents, sample.log_probs, adv, torch.ones_like(adv))
        policy_update(policy, opt, batch, cfg, variances, noise, epochs=2, minibatch_size=64, generator=g)
    with torch.no_grad():
        contexts = env.sample_contexts(512, g)
        final = env.reward(contexts, policy.predict_action_chunk(contexts, mode="ode", num_steps=steps,
                                                                  generator=g).actions).mean().item()
    return curve, final


@pytest.mark.parametrize("flowscale", [False, True], ids=["fa_grpo", "fa_grpo+flowscale"])
def test_fa_grpo_raises_reward_on_a_contextual_bandit(flowscale):
    curve, final = _train_bandit(flowscale)
    start = sum(curve[:3]) / 3
    assert start < 0.2 and final > start + 0.4, (start, final, curve)
