import math

import pytest
import torch

from prophrl_nn import flow_matching as fm


def test_sigma_grid_runs_from_noise_to_data():
    grid = fm.sigmas(4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert fm.sigmas(0).tolist() == [1.0]
    with pytest.raises(ValueError):
        fm.sigmas(-1)


def test_shifted_grid_and_training_noise():
    shifted = fm.sigmas(4, shift=3.0, dtype=torch.float64).tolist()
    assert shifted[0] == pytest.approx(1.0) and shifted[-1] == 0.0 and shifted[2] == pytest.approx(0.75)
    x0, noise, t = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0.0, 0.5, 1.0])
    x_t = fm.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[2], noise[2])
    # one Euler step with the exact velocity from t lands on x0
    v = fm.velocity_target(x0, noise)
    torch.testing.assert_close(fm.euler_step(x_t[1], v[1], 0.5, 0.0), x0[1])
    times = fm.sample_training_times(1000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert times.shape == (1000,) and 0.0 <= float(times.min()) and float(times.max()) <= 1.0
    assert float(times.mean()) > 0.6   # the shift moves training times towards noise (unshifted mean 0.5)


def test_sde_std_uses_next_sigma_at_the_first_step():
    assert fm.sde_std(1.0, 0.9, 0.7) == pytest.approx(0.7 * math.sqrt(1.0 / 0.1))
    assert fm.sde_std(0.5, 0.4, 0.7) == pytest.approx(0.7)


def test_sde_mean_matches_flow_grpo_formula_by_hand():
    x, v = torch.tensor([[0.3]]), torch.tensor([[-1.2]])
    sigma, sigma_next, a = 0.6, 0.5, 0.7
    std = a * math.sqrt(0.6 / 0.4)
    dt = -0.1
    expected = 0.3 * (1 + std**2 / (2 * 0.6) * dt) + (-1.2) * (1 + std**2 * 0.4 / (2 * 0.6)) * dt
    mean, step_std = fm.sde_mean(x, v, sigma, sigma_next, a)
    assert mean.item() == pytest.approx(expected, rel=1e-6)
    assert step_std == pytest.approx(std * math.sqrt(0.1))


def test_sde_step_log_prob_is_the_closed_form_gaussian_density():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(5, 4, 3, generator=g), torch.randn(5, 4, 3, generator=g)
    step = fm.sde_step(x, v, 0.8, 0.7, 0.7, generator=g)
    reference = torch.distributions.Normal(step.mean, step.std).log_prob(step.sample).flatten(1).sum(1)
    torch.testing.assert_close(step.log_prob, reference)
    # the sample is distributed as N(mean, std^2): its standardised residual is unit normal
    z = ((step.sample - step.mean) / step.std).flatten()
    assert abs(z.mean().item()) < 0.3 and abs(z.std().item() - 1) < 0.3


def test_sde_mean_is_euler_step_when_noise_is_zero():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    mean, std = fm.sde_mean(x, v, 0.4, 0.3, 0.0)
    torch.testing.assert_close(mean, fm.euler_step(x, v, 0.4, 0.3))
    assert std == 0.0


def test_step_noise_variance_is_std_squared_times_dt():
    variances = fm.step_noise_variance(5, 0.7)
    grid = fm.sigmas(5).tolist()
    for k, var in enumerate(variances.tolist()):
        assert var == pytest.approx(fm.sde_std(grid[k], grid[k + 1], 0.7) ** 2 * (grid[k] - grid[k + 1]))
    assert variances[0] > variances[-1], "early (high-noise) steps have the larger variance"


def test_seeded_draws_follow_the_generator_and_land_on_the_requested_device():
    """A CPU generator keeps its seeded stream whatever device the values go to (here 'meta', which no generator
    can draw on), so a seed draws the same training times and noise on every device."""
    expected = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    drawn = fm.seeded_draw(torch.randn, (3, 4), torch.Generator().manual_seed(7), "cpu")
    torch.testing.assert_close(drawn, expected, rtol=0, atol=0)
    moved = fm.seeded_draw(torch.randn, (3, 4), torch.Generator().manual_seed(7), "meta", torch.float64)
    assert moved.device.type == "meta" and moved.dtype == torch.float64
    times = fm.sample_training_times(5, 3.0, torch.Generator().manual_seed(1), "meta")
    assert times.device.type == "meta" and times.dtype == torch.float32
    reference = fm.sample_training_times(5, 3.0, torch.Generator().manual_seed(1), "cpu")
    torch.testing.assert_close(reference, fm.shift_sigmas(
        torch.rand(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 3.0).float())
    x = torch.zeros(2, 3, 4, device="meta")
    step = fm.sde_step(x, torch.zeros_like(x), 0.8, 0.6, 0.5, generator=torch.Generator().manual_seed(2))
    assert step.sample.device.type == "meta"
