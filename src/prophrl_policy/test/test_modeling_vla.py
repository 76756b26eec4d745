import json

import numpy as np
import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_policy.transforms import NormStats


def _obs(batch=3, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.rand(batch, 3, size, size, generator=g), ["lift the red cube"] * batch,
                       torch.randn(batch, 8, generator=g))


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    p = VLAPolicy(get_vla_config("tiny", hidden_dim=64, num_layers=2, image_size=64, horizon=6))
    with torch.no_grad():  # the output layer starts at zero; give it weights so velocities depend on inputs
        p.action_out[1].weight.normal_(0, 0.1)
    return p.eval()


def test_ode_sampling_is_deterministic_given_a_seed(policy):
    obs = _obs()
    a = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1)).actions
    b = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1)).actions
    c = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(2)).actions
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (3, 6, 7)


def test_sde_sample_exposes_per_step_log_probs_that_recompute_exactly(policy):
    obs = _obs()
    sampler = SamplerConfig(num_steps=5, noise_level=0.7)
    sample = policy.predict_action_chunk(obs, mode="sde", sampler=sampler, generator=torch.Generator().manual_seed(4))
    assert sample.log_probs.shape == (3, 5) and sample.latents.shape == (3, 6, 6, 14)
    log_probs, means, stds = policy.sde_log_probs(obs, sample.latents, sampler)
    torch.testing.assert_close(log_probs, sample.log_probs, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(means, sample.means, rtol=1e-4, atol=1e-5)
    # closed form, robot dims only (padding carries no reward signal)
    k = 2
    density = torch.distributions.Normal(means[:, k, :, :7], stds[k]).log_prob(sample.latents[:, k + 1, :, :7])
    torch.testing.assert_close(log_probs[:, k], density.flatten(1).sum(1), rtol=1e-4, atol=1e-3)


def test_log_prob_gradients_reach_the_action_head(policy):
    obs = _obs()
    sampler = SamplerConfig(num_steps=4)
    sample = policy.predict_action_chunk(obs, mode="sde", sampler=sampler, generator=torch.Generator().manual_seed(5))
    policy.zero_grad()
    log_probs, _, _ = policy.sde_log_probs(obs, sample.latents, sampler)
    log_probs.sum().backward()
    for module in (policy.action_out, policy.denoiser, policy.vision, policy.state_proj):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    policy.zero_grad()


def _close_at_scale(a, b):
    """Equal to float rounding at b's scale: gradients summed in another order differ by ~1e-7 of their largest
    element (up to ~300 here), far below what a wrong layout or a missing term gives."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_velocity_is_the_action_expert_as_its_modules_define_it():
    """velocity = action_out(denoiser(time_mlp(cat[action_in(x_t), embedding(t)]) + action_pos, obs tokens)), the
    function a checkpoint's weights were trained as: values and gradients, on weights away from the initialisation."""
    from prophrl_policy.modeling_vla import sinusoidal_embedding

    torch.manual_seed(3)
    p = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=2, num_heads=4, image_size=32, horizon=5)).eval()
    with torch.no_grad():
        for parameter in p.parameters():
            parameter.normal_(0, 0.2)
    x_t, t, obs_tokens = torch.randn(6, 5, 14), torch.rand(6), torch.randn(2, 9, 32)

    def by_modules():
        time = sinusoidal_embedding(t, 32)[:, None].expand(-1, 5, -1)
        tokens = p.time_mlp(torch.cat([p.action_in(x_t), time], dim=-1)) + p.action_pos
        return p.action_out(p.denoiser(tokens, obs_tokens.repeat_interleave(3, 0)))

    ours, theirs = p.velocity(x_t, t, obs_tokens), by_modules()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    parameters = [q for q in p.parameters() if q.requires_grad]
    grads_ours = torch.autograd.grad(ours.square().sum(), parameters, allow_unused=True)
    grads_theirs = torch.autograd.grad(by_modules().square().sum(), parameters, allow_unused=True)
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            _close_at_scale(a, b)


def test_the_written_out_denoiser_is_the_torch_decoder_with_keys_values_computed_once():
    from torch import nn

    from prophrl_policy import decoder_attention

    torch.manual_seed(1)
    layer = nn.TransformerDecoderLayer(32, 4, 64, 0.0, batch_first=True, norm_first=True, activation="gelu")
    decoder = nn.TransformerDecoder(layer, 2)
    for parameter in decoder.parameters():  # away from the identity-like initialisation
        nn.init.normal_(parameter, std=0.2)
    tokens, memory = torch.randn(3, 6, 32, requires_grad=True), torch.randn(3, 11, 32)
    keys_values = decoder_attention.memory_keys_values(decoder, memory)
    assert keys_values[0][0].shape == (3, 4, 11, 8)
    ours = decoder_attention.decode(decoder, tokens, keys_values)
    theirs = decoder(tokens, memory)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # torch's inference fast path as well
        torch.testing.assert_close(decoder_attention.decode(decoder, tokens, keys_values), decoder(tokens, memory),
                                   rtol=1e-5, atol=1e-5)
    grad_ours = torch.autograd.grad(ours.square().sum(), [tokens, *decoder.parameters()])
    grad_theirs = torch.autograd.grad(theirs.square().sum(), [tokens, *decoder.parameters()])
    for a, b in zip(grad_ours, grad_theirs, strict=True):
        _close_at_scale(a, b)
    post_norm = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, 0.0, batch_first=True), 1)
    with pytest.raises(ValueError, match="pre-norm"):
        decoder_attention.check_supported(post_norm)
    # several token rows per memory row (the K denoising steps of one observation, sample-major): the same as the
    # decoder on the memory repeated per row, values and gradients, without repeating the keys and values
    steps = torch.randn(3 * 4, 6, 32, requires_grad=True)
    keys_values = decoder_attention.memory_keys_values(decoder, memory)
    ours = decoder_attention.decode(decoder, steps, keys_values)
    theirs = decoder(steps, memory.repeat_interleave(4, 0))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    grad_ours = torch.autograd.grad(ours.square().sum(), [steps, *decoder.parameters()])
    grad_theirs = torch.autograd.grad(theirs.square().sum(), [steps, *decoder.parameters()])
    for a, b in zip(grad_ours, grad_theirs, strict=True):
        _close_at_scale(a, b)
    with pytest.raises(ValueError, match="not a whole number of rows per memory row"):
        decoder_attention.decode(decoder, torch.randn(4, 6, 32), keys_values)


def test_dropout_training_takes_the_torch_decoder_and_evaluation_the_written_out_one():
    torch.manual_seed(0)
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=64, num_layers=2, image_size=64, horizon=6, dropout=0.5))
    with torch.no_grad():
        policy.action_out[1].weight.normal_(0, 0.1)
    obs_tokens = policy.encode_observation(_obs())
    x, t = torch.randn(3, 6, policy.config.action_dim), torch.full((3,), 0.5)
    policy.train()
    torch.manual_seed(5)
    first = policy.velocity(x, t, obs_tokens)
    torch.manual_seed(6)
    assert not torch.allclose(first, policy.velocity(x, t, obs_tokens)), "dropout must be active in training"
    policy.eval()
    torch.testing.assert_close(policy.velocity(x, t, obs_tokens),
                               policy.velocity(x, t, obs_tokens, policy.observation_memory(obs_tokens)))


def test_flow_matching_learns_a_state_conditioned_chunk():
    torch.manual_seed(0)
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=64, num_layers=2, image_size=32, horizon=4))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n=32):
        states = torch.randn(n, 8, generator=g)
        target = states[:, :7].unsqueeze(1).repeat(1, 4, 1) * 0.5  # chunk = a function of the state
        return Observation(torch.zeros(n, 3, 32, 32), ["go"] * n, states), target

    losses = []
    for _ in range(150):
        obs, target = batch()
        loss = policy.compute_loss(obs, target, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    obs, target = batch(64)
    predicted = policy.eval().predict_action_chunk(obs, generator=g).actions
    baseline = ((target - target.mean(0)) ** 2).mean()
    assert ((predicted - target) ** 2).mean() < 0.5 * baseline


def test_save_and_load_round_trip_and_corrupt_checkpoints(policy, tmp_path):
    obs = _obs()
    policy.norm_stats = NormStats((0.1,) * 8, (2.0,) * 8, (0.0,) * 7, (0.05,) * 7)
    path = policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(path).eval()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(loaded.predict_action_chunk(obs, generator=g1).actions,
                               policy.predict_action_chunk(obs, generator=g2).actions)
    assert loaded.norm_stats == policy.norm_stats

    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read weights"):
        VLAPolicy.from_pretrained(path)
    with pytest.raises(ConfigError, match="missing config.json"):
        VLAPolicy.from_pretrained(tmp_path)
    policy.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["hidden_dim"] = 32
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="do not match"):
        VLAPolicy.from_pretrained(path)


def test_the_sampler_is_saved_with_the_policy_and_a_checkpoint_saved_before_noise_level_loads(tmp_path):
    config = get_vla_config("tiny", hidden_dim=32, num_layers=1, image_size=32, horizon=4, num_inference_steps=4,
                            noise_level=0.5)
    path = VLAPolicy(config).save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(path)
    assert loaded.config.sampler == SamplerConfig(num_steps=4, noise_level=0.5)
    sample = loaded.predict_action_chunk(_obs(size=32), mode="sde", generator=torch.Generator().manual_seed(0))
    assert sample.latents.shape[1] == 5, "sampled with the saved number of steps"
    with pytest.raises(ValueError, match="the path has 4 denoising steps, the sampler 3"):
        loaded.sde_log_probs(_obs(size=32), sample.latents, SamplerConfig(num_steps=3))
    saved = json.loads((path / "config.json").read_text())
    del saved["noise_level"]
    (path / "config.json").write_text(json.dumps(saved))
    assert VLAPolicy.from_pretrained(path).config.sampler == SamplerConfig(num_steps=4)
    del saved["num_inference_steps"]
    (path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="missing required key 'num_inference_steps'"):
        VLAPolicy.from_pretrained(path)
    with pytest.raises(ConfigError, match="noise_level must be a number > 0"):
        get_vla_config("tiny", noise_level=0.0).validate()


def test_observation_from_frames_is_the_one_frame_conversion():
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    states = np.zeros((2, 8), np.float32)
    obs = Observation.from_frames(frames, ["a", "b"], states)
    assert obs.images.shape == (2, 3, 40, 30) and obs.images.dtype == torch.float32
    torch.testing.assert_close(obs.images[1, :, 5, 7], torch.from_numpy(frames[1, 5, 7]).float() / 255)
    resized = Observation.from_frames(torch.from_numpy(frames), ["a", "b"], states,
                                      get_vla_config("tiny", image_size=16))
    assert resized.images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(resized.images, torch.nn.functional.interpolate(
        obs.images, size=(16, 16), mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match=r"frames must be \(B, H, W, 3\) uint8"):
        Observation.from_frames(frames.astype(np.float32), ["a", "b"], states)


def test_camera_size_reduces_camera_frames_as_prophets_training_frames_are_and_prophets_frames_pass_as_they_are():
    from prophrl_common.frames import resize_frames

    config = get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=48, horizon=4,
                            camera_size=16)
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    states = np.zeros((2, 8), np.float32)
    seen = Observation.from_frames(frames, ["a", "b"], states, config)
    # The robot's 64 px camera and Prophet's 16 px frames of the same scene (what it learned from: its dataset's
    # frames reduced by resize_frames) reach the policy as the same image.
    prophets = resize_frames(frames, 16)
    torch.testing.assert_close(Observation.from_frames(prophets, ["a", "b"], states, config).images, seen.images,
                               atol=0, rtol=0)
    assert seen.images.shape == (2, 3, 48, 48)
    torch.testing.assert_close(seen.images, torch.nn.functional.interpolate(
        torch.from_numpy(prophets).permute(0, 3, 1, 2).float() / 255, size=(48, 48), mode="bilinear",
        align_corners=False))
    # Without camera_size the camera frame goes straight to image_size: detail above 16 px survives.
    straight = Observation.from_frames(frames, ["a", "b"], states, get_vla_config("tiny", image_size=48)).images
    assert (seen.images - straight).abs().mean() > 0.05
    # Raw camera images handed to such a policy directly are refused, not seen through another pipeline.
    policy = VLAPolicy(config).eval()
    with pytest.raises(ValueError, match="reduced to 16 px first: pass them through Observation.from_frames"):
        policy.encode_observation(Observation.from_frames(frames, ["a", "b"], states))
    assert policy.encode_observation(seen).shape[0] == 2
    with pytest.raises(ConfigError, match="camera_size must be >= 0"):
        get_vla_config("tiny", camera_size=-1)


def test_a_checkpoint_saved_before_camera_size_loads_without_a_reduction(tmp_path):
    path = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, image_size=32, horizon=4,
                                    camera_size=8)).save_pretrained(tmp_path / "ckpt")
    assert VLAPolicy.from_pretrained(path).config.camera_size == 8
    saved = json.loads((path / "config.json").read_text())
    del saved["camera_size"]
    (path / "config.json").write_text(json.dumps(saved))
    assert VLAPolicy.from_pretrained(path).config.camera_size == 0


def test_bad_inputs_fail_clearly(policy):
    with pytest.raises(ValueError, match="batch sizes differ"):
        Observation(torch.rand(2, 3, 8, 8), ["a"], torch.zeros(2, 8))
    with pytest.raises(ValueError, match="actions must be"):
        policy.compute_loss(_obs(), torch.zeros(3, 5, 7))
    with pytest.raises(ConfigError, match="unknown policy config"):
        get_vla_config("huge")


def test_pretrained_mobilenet_loads_imagenet_weights():
    from prophrl_policy.encoders import MobileNetV2Features

    net = MobileNetV2Features()
    before = net.features[0][0].weight.clone()
    net.load_imagenet_weights()
    assert not torch.equal(before, net.features[0][0].weight)
    net.eval()
    # ImageNet features respond to image content: two different images give different features
    with torch.no_grad():
        a = net(torch.rand(1, 3, 64, 64)).mean((2, 3))
        b = net(torch.zeros(1, 3, 64, 64)).mean((2, 3))
    assert (a - b).abs().mean() > 1e-3
