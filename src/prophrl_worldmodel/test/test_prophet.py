import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, WanTransformer3DModel

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.configuration_prophet import ProphetConfig, get_prophet_config
from prophrl_worldmodel.modeling_prophet import (ADAPTER_NAME, CONFIG_NAME, WEIGHTS_NAME, Prophet, ProphetBatch,
                                                 colour_mask)

SIZE = 32
# 32 px, 4x VAE -> 8x8 latents; 2 frames per clip from 2 x 2 actions; 4 history frames at two scales.
SMALL = dict(image_size=SIZE, frames_per_clip=2, actions_per_frame=2, history_scales=((2, 1, 2, 2), (2, 2, 4, 4)),
             num_layers=2, num_inference_steps=3)


def _small_config(**overrides) -> ProphetConfig:
    return get_prophet_config("tiny", **{**SMALL, **overrides})


def _frames(*shape, seed=0):
    return torch.randint(0, 256, (*shape, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _actions(batch, seed=0, arms=2):
    return torch.randn(batch, 4, 7 * arms, generator=torch.Generator().manual_seed(seed)) * 0.01


def _give_action_heads_weights(model: Prophet) -> None:
    """The action MLPs end at zero (a pretrained base starts unchanged); tests need them live."""
    torch.manual_seed(7)
    with torch.no_grad():
        for mlp in (model.conditioning.action_embedding, model.conditioning.action_frame_embedding):
            if mlp is not None:
                mlp[2].weight.normal_(0, 0.5)


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Test runs share 2 cores: OpenMP threads then oversubscribe and spin (measured here: 12 s with one
    thread vs 200 s with two for this module under parallel test load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Prophet:
    torch.manual_seed(0)
    m = Prophet(_small_config())
    _give_action_heads_weights(m)
    return m.eval()


def _square_world_batch(batch: int, rng: np.random.Generator) -> dict:
    """A bright square that moves 3 px per frame in the direction of the first arm's dpos (x, y)."""
    def frame(x, y):
        image = np.full((SIZE, SIZE, 3), 30, np.uint8)
        image[y:y + 6, x:x + 6] = (240, 220, 60)
        return image

    samples = []
    for _ in range(batch):
        x, y = rng.integers(8, SIZE - 14, size=2)
        dx, dy = [(3, 0), (-3, 0), (0, 3), (0, -3)][rng.integers(4)]
        actions = np.zeros((4, 7), np.float32)
        actions[:, 0], actions[:, 1] = dx / 300, dy / 300
        samples.append(dict(history_frames=np.stack([frame(x, y)] * 2), current_frame=frame(x, y), actions=actions,
                            future_frames=np.stack([frame(x + dx * k, y + dy * k) for k in (1, 2)])))
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


# ----- config -----------------------------------------------------------------------------------------
def test_named_configs_and_validation():
    small, large = get_prophet_config("tiny_32px_start_frame"), get_prophet_config("tiny_64px_start_frame")
    assert large.image_size == 2 * small.image_size
    assert large.image_size // large.vae_compression == small.image_size // small.vae_compression  # same tokens
    tiny = get_prophet_config("tiny")
    assert tiny.action_horizon == 20 and tiny.history_length == 8 and tiny.vae_compression == 4
    assert get_prophet_config("base").finetune == "lora+conditioning"
    with pytest.raises(ConfigError, match="unknown Prophet config"):
        get_prophet_config("huge")
    with pytest.raises(ConfigError, match="unknown_field"):
        get_prophet_config("tiny", unknown_field=1)
    with pytest.raises(ConfigError, match="does not tile"):
        get_prophet_config("tiny", image_size=40)          # 10x10 latents vs 8x8 pooling windows
    with pytest.raises(ConfigError, match="pool_t"):
        get_prophet_config("tiny", history_scales=((3, 2, 2, 2),))
    with pytest.raises(ConfigError, match="finetune"):
        get_prophet_config("tiny", finetune="qlora")


def test_config_json_round_trip(tmp_path):
    config = _small_config()
    (tmp_path / "c.json").write_text(config.to_json())
    assert ProphetConfig.from_json_file(tmp_path / "c.json") == config
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads(config.to_json()), "num_layers": "two"}))
    with pytest.raises(ConfigError, match="num_layers"):
        ProphetConfig.from_json_file(tmp_path / "bad.json")


# ----- generation ------------------------------------------------------------------------------------
def test_generate_shapes_range_and_input_forms(model):
    out = model.generate(_frames(3), _frames(3, 5), _actions(3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, SIZE, SIZE, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    # numpy uint8 frames of another size are resized; single-arm actions are zero-padded; no history is fine
    big = np.zeros((3, 48, 48, 3), np.uint8)
    assert model.generate(big, None, _actions(3, arms=1).numpy(), num_steps=1).shape == (3, 2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="actions"):
        model.generate(_frames(3), None, torch.zeros(3, 5, 14))
    with pytest.raises(ValueError, match="start_frame"):
        model.generate(torch.zeros(3, SIZE, SIZE), None, _actions(3))


def test_a_larger_live_frame_is_reduced_as_prophets_training_frames_were(model):
    """Training frames are reduced once, with cv2.INTER_AREA (prophrl_data.shards -> prophrl_common.frames); a
    128 px camera frame handed to the model (an imagination start) must become the same pixels."""
    from prophrl_common.frames import resize_frames

    yy, xx = np.mgrid[0:128, 0:128]
    scene = np.stack([(xx * 2) % 256, (yy * 5) % 256, ((xx // 8 + yy // 8) % 2) * 255], -1).astype(np.uint8)
    live = torch.from_numpy(scene)[None, None]                                    # (1, 1, 128, 128, 3)
    trained = torch.from_numpy(resize_frames(scene[None], SIZE))[None]           # (1, 1, 32, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_frames(live), model.encode_frames(trained), atol=0.05, rtol=0)


def test_generate_is_deterministic_given_a_generator(model):
    args = (_frames(2), _frames(2, 3), _actions(2))
    a = model.generate(*args, generator=torch.Generator().manual_seed(5))
    b = model.generate(*args, generator=torch.Generator().manual_seed(5))
    c = model.generate(*args, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_rollout_is_closed_loop(model):
    start, chunks = _frames(1), _actions(6).reshape(2, 3, 4, 14)  # a group of 2 rollouts, 3 chunks each
    frames = model.rollout(start, chunks, num_steps=1, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 6, SIZE, SIZE, 3)
    # The same clips by hand: each clip starts from the previous clip's last frame, and the history
    # buffer gains the start frame plus the clip's other frames (most recent last, truncated).
    generator = torch.Generator().manual_seed(0)
    current = start.float().expand(2, -1, -1, -1)  # the group shares its start
    history = current.new_zeros(2, 0, SIZE, SIZE, 3)
    for i in range(3):
        clip = model.generate(current, history, chunks[:, i], 1, generator)
        torch.testing.assert_close(frames[:, 2 * i:2 * i + 2], clip)
        history = torch.cat([history, current[:, None], clip[:, :-1]], dim=1)[:, -model.config.history_length:]
        current = clip[:, -1]
    assert history.shape[1] == 4  # truncated to history_length


def test_actions_change_the_prediction(model):
    start, history = _frames(1).expand(2, -1, -1, -1), _frames(1, 2).expand(2, -1, -1, -1, -1)
    actions = torch.cat([_actions(1, seed=1), _actions(1, seed=2)])
    out = model.generate(start, history, actions, generator=torch.Generator().manual_seed(0))
    assert (out[0] - out[1]).abs().mean() > 1.0


def test_action_frames_count_only_where_calibration_is_known(model):
    start, history, actions = _frames(2), _frames(2, 2), _actions(1).expand(2, -1, -1)
    frames_a, frames_b = _frames(2, 2, seed=1), _frames(2, 2, seed=2)
    calibrated = torch.tensor([True, False])
    a = model.generate(start, history, actions, generator=torch.Generator().manual_seed(0),
                       action_frames=frames_a, calibrated=calibrated)
    b = model.generate(start, history, actions, generator=torch.Generator().manual_seed(0),
                       action_frames=frames_b, calibrated=calibrated)
    none = model.generate(start, history, actions, generator=torch.Generator().manual_seed(0))
    assert (a[0] - b[0]).abs().mean() > 0.5                 # calibrated sample: its action frames matter
    torch.testing.assert_close(a[1], b[1])                   # uncalibrated sample: ignored
    torch.testing.assert_close(a[1], none[1])
    without = Prophet(_small_config(use_action_frames=False))
    with pytest.raises(ValueError, match="use_action_frames"):
        without.generate(start, history, actions, action_frames=frames_a)


def _guided(model: Prophet, guidance: float) -> Prophet:
    guided = Prophet(dataclasses.replace(model.config, action_guidance=guidance))
    guided.load_state_dict(model.state_dict())
    return guided.eval()


def test_action_guidance_scales_the_actions_effect_from_the_no_action_clip(model):
    start, history, actions = _frames(2), _frames(2, 2), _actions(2, seed=3) * 100   # about 1 action std
    frames = _frames(2, 2, seed=4)

    def clip(m, a, **kwargs):
        return m.generate(start, history, a, generator=torch.Generator().manual_seed(0), action_frames=frames,
                          **kwargs)
    plain = clip(model, actions)
    torch.testing.assert_close(clip(_guided(model, 1.0), actions), plain)
    # guidance 0 is the clip without actions: zero normalised actions, action frames ignored
    no_actions = clip(model, torch.zeros_like(actions), calibrated=torch.tensor([False, False]))
    torch.testing.assert_close(clip(_guided(model, 0.0), actions), no_actions, atol=1e-3, rtol=0)
    # beyond 1 the commanded part counts for more: the clip moves further from the no-action one
    distance = {g: (clip(_guided(model, g), actions) - no_actions).abs().mean().item() for g in (1.0, 3.0)}
    assert distance[3.0] > 1.2 * distance[1.0] > 0      # (pixels saturate: not 3x)


def test_action_dropout_conditions_a_share_of_training_clips_on_no_actions():
    torch.manual_seed(0)
    m = Prophet(_small_config(action_dropout=0.999))
    _give_action_heads_weights(m)
    rng = np.random.default_rng(0)
    batch = _square_world_batch(2, rng)
    zeroed = dict(batch, actions=np.zeros_like(batch["actions"]))

    def loss(b, train=True, **changes):
        m.configure_action_guidance(**changes)
        m.train(train)
        return m.training_loss(b, torch.Generator().manual_seed(5)).item()
    # this seed drops both clips' actions: the actions given no longer matter
    assert loss(batch) == pytest.approx(loss(zeroed), abs=1e-6)
    assert loss(batch, action_dropout=0.0) != pytest.approx(loss(zeroed, action_dropout=0.0), abs=1e-6)
    # outside training nothing is dropped
    assert loss(batch, train=False, action_dropout=0.999) == pytest.approx(loss(batch, train=False, action_dropout=0.0))
    with pytest.raises(ConfigError, match="action_dropout"):
        m.configure_action_guidance(action_dropout=1.0)
    with pytest.raises(ConfigError, match="action_guidance"):
        m.configure_action_guidance(action_guidance=-1.0)


# ----- training --------------------------------------------------------------------------------------
def test_vae_training_reduces_reconstruction_error():
    torch.manual_seed(0)
    m = Prophet(_small_config())
    frames = _square_world_batch(4, np.random.default_rng(0))["future_frames"]
    opt = torch.optim.AdamW(m.vae_parameters(), lr=3e-3)
    first = m.vae_loss(frames, torch.Generator().manual_seed(0))
    for _ in range(15):
        loss = m.vae_loss(frames).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = m.vae_loss(frames, torch.Generator().manual_seed(0))
    assert last.reconstruction < 0.7 * first.reconstruction and last.kl >= 0
    m.fit_latent_statistics(frames)
    with torch.no_grad():
        latents = m.encode_frames(frames)
    assert latents.mean().abs() < 0.1 and latents.std() == pytest.approx(1.0, abs=0.1)


def test_the_colour_mask_marks_saturated_bright_pixels_only():
    pixels = np.array([[128, 128, 128], [255, 255, 255], [0, 0, 0], [40, 10, 50], [150, 40, 200], [200, 40, 40]],
                      np.float32)
    mask = colour_mask(torch.as_tensor(pixels / 127.5 - 1).T[None, :, :, None])
    assert mask.flatten().tolist() == [0, 0, 0, 0, 1, 1]  # grey, white, black, dark purple | purple, red


def _cube_on_grey_frames(count: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy grey backgrounds, each with one 3x3 purple cube: the demo's scene in miniature."""
    frames = rng.integers(70, 130, size=(count, 1, 1, 1)) + rng.integers(0, 10, size=(count, SIZE, SIZE, 1))
    frames = np.repeat(frames, 3, axis=-1).astype(np.uint8)
    for frame in frames:
        x, y = rng.integers(2, SIZE - 5, size=2)
        frame[y:y + 3, x:x + 3] = (150, 40, 200)
    return frames


def test_a_colour_weighted_vae_keeps_a_small_cubes_colour_that_the_plain_l1_erases():
    errors, kept = {}, {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        m = Prophet(_small_config(vae_channels=(8, 16), vae_colour_weight=weight))
        opt = torch.optim.AdamW(m.vae_parameters(), lr=3e-3)
        rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
        for _ in range(50):
            loss = m.vae_loss(_cube_on_grey_frames(8, rng), generator).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = m._pixels(_cube_on_grey_frames(32, np.random.default_rng(1)), "frames")
            reconstruction = m._vae_decode(m._posterior(x).mean)
        cube = colour_mask(x).bool()
        errors[weight] = (reconstruction - x).abs().mean(1, keepdim=True)[cube].mean().item() * 127.5
        kept[weight] = colour_mask(reconstruction).bool()[cube].float().mean().item()
    assert errors[50.0] < 0.5 * errors[0.0], errors
    assert kept[50.0] > 0.8 and kept[0.0] < 0.5, kept

    grey = np.full((2, SIZE, SIZE, 3), 100, np.uint8)
    result = m.vae_loss(grey, torch.Generator().manual_seed(0))
    assert result.loss.item() == pytest.approx((result.reconstruction + m.config.vae_kl_weight * result.kl).item())
    result = m.vae_loss(_cube_on_grey_frames(2, rng), torch.Generator().manual_seed(0))
    assert result.loss.item() != pytest.approx((result.reconstruction + m.config.vae_kl_weight * result.kl).item()), \
        "with a cube in view the loss is weighted; reconstruction stays the plain L1"
    with pytest.raises(ConfigError, match="vae_colour_weight"):
        _small_config(vae_colour_weight=-1.0)


def test_denoiser_training_reduces_the_loss_and_actions_steer_the_clip():
    torch.manual_seed(0)
    m = Prophet(_small_config(use_action_frames=False))
    rng = np.random.default_rng(0)
    m.fit_action_statistics(_square_world_batch(64, rng)["actions"])
    probe = ProphetBatch(**_square_world_batch(8, rng))
    before = m.training_loss(probe, torch.Generator().manual_seed(1)).item()
    opt = torch.optim.AdamW(m.denoiser_parameters(), lr=2e-3)
    for _ in range(25):
        loss = m.training_loss(_square_world_batch(4, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.training_loss(probe, torch.Generator().manual_seed(1)).item()
    assert after < 0.8 * before
    assert all(p.grad is not None for p in m.conditioning.action_embedding.parameters())
    assert all(p.grad is None for p in m.vae.parameters())  # training_loss keeps the VAE frozen
    # four directions from one start frame and one noise seed: four different clips
    start = probe.current_frame[:1].repeat(4, 0)
    actions = np.zeros((4, 4, 7), np.float32)
    actions[[0, 1], :, 0] = [[0.01], [-0.01]]
    actions[[2, 3], :, 1] = [[0.01], [-0.01]]
    clips = m.eval().generate(start, None, actions, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (clips[i] - clips[j]).abs().mean() > 0.1


def test_training_loss_checks_shapes(model):
    batch = dict(history_frames=_frames(2, 1), current_frame=_frames(2), actions=_actions(2),
                 future_frames=_frames(2, 3))
    with pytest.raises(ValueError, match="future_frames"):
        model.training_loss(batch)
    with pytest.raises(ValueError, match="unknown batch key"):
        model.training_loss({**batch, "extra": 1})


# ----- persistence -----------------------------------------------------------------------------------
def test_save_load_round_trip(model, tmp_path):
    model.fit_action_statistics(_actions(16, seed=3))
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    loaded = Prophet.from_pretrained(path)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.action_std, model.action_std)
    args = (_frames(2), _frames(2, 3), _actions(2))
    torch.testing.assert_close(loaded.generate(*args, generator=torch.Generator().manual_seed(3)),
                               model.generate(*args, generator=torch.Generator().manual_seed(3)))
    model.save_pretrained(path)  # overwriting an existing checkpoint leaves one clean directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_corrupt_or_mismatched_checkpoints_are_config_errors(model, tmp_path):
    path = model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="not a Prophet checkpoint"):
        Prophet.from_pretrained(tmp_path / "missing")
    config = json.loads((path / CONFIG_NAME).read_text())
    (path / CONFIG_NAME).write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ConfigError, match="do not match"):
        Prophet.from_pretrained(path)
    (path / CONFIG_NAME).write_text(json.dumps({**config, "ffn_dim": 128}))
    with pytest.raises(ConfigError, match="do not match"):
        Prophet.from_pretrained(path)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    weights = path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot read weights"):
        Prophet.from_pretrained(path)
    (path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read Prophet config"):
        Prophet.from_pretrained(path)


# ----- pretrained base + LoRA ------------------------------------------------------------------------
def _save_tiny_wan_base(root, vae_class="AutoencoderKL"):
    """A random-initialised stand-in for a local diffusers Wan checkpoint: vae/ + transformer/."""
    torch.manual_seed(1)
    if vae_class == "AutoencoderKL":
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=4,
                            scaling_factor=0.5, shift_factor=0.1)
    else:
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, False], scale_factor_spatial=4,
                               latents_mean=[0.0] * 4, latents_std=[2.0] * 4)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                                        num_layers=2)
    vae.save_pretrained(root / "vae")
    transformer.save_pretrained(root / "transformer")
    return transformer


def _base_config(root, **overrides):
    return get_prophet_config("base", **{**SMALL, "pretrained_path": str(root), **overrides})


def test_base_loads_a_local_wan_model_and_trains_only_lora(tmp_path):
    stock = _save_tiny_wan_base(tmp_path / "wan")
    model = Prophet(_base_config(tmp_path / "wan", finetune="lora", lora_rank=4))
    loaded = model.transformer.state_dict()
    for name, tensor in stock.state_dict().items():
        key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if f"{name.rsplit('.', 1)[0]}.base_layer.weight" in loaded else name
        torch.testing.assert_close(loaded[key], tensor)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".attn1.to_q.lora_A" in name for name in trainable)
    assert model.latent_mean[0].item() == pytest.approx(0.1) and model.latent_std[0].item() == pytest.approx(2.0)
    both = Prophet(_base_config(tmp_path / "wan", finetune="lora+conditioning", lora_rank=4))
    trainable = {name for name, p in both.named_parameters() if p.requires_grad}
    assert all("lora_" in name or name.startswith("conditioning.") for name in trainable)
    assert any(name.startswith("conditioning.") for name in trainable)


def test_lora_adapters_save_and_load_alone(tmp_path):
    _save_tiny_wan_base(tmp_path / "wan")
    torch.manual_seed(0)
    model = Prophet(_base_config(tmp_path / "wan", lora_rank=4))
    batch = dict(history_frames=_frames(2, 2), current_frame=_frames(2), actions=_actions(2),
                 future_frames=_frames(2, 2))
    opt = torch.optim.AdamW(model.denoiser_parameters(), lr=1e-2)
    for _ in range(2):
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = model.save_pretrained(tmp_path / "adapted")
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, ADAPTER_NAME])
    from safetensors import safe_open
    with safe_open(str(path / ADAPTER_NAME), "pt") as f:
        keys = set(f.keys())
    assert any("lora_B" in k for k in keys) and not any("base_layer" in k or k.startswith("vae.") for k in keys)
    loaded = Prophet.from_pretrained(path).eval()
    args = (_frames(2), None, _actions(2))
    expected = model.eval().generate(*args, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.generate(*args, generator=torch.Generator().manual_seed(0)), expected)
    # the adapters matter: the same base without them predicts something else
    plain = Prophet(_base_config(tmp_path / "wan", finetune="full")).eval()
    plain.load_state_dict({k: v for k, v in loaded.state_dict().items() if "lora_" not in k and "base_layer" not in k},
                          strict=False)
    assert not torch.allclose(plain.generate(*args, generator=torch.Generator().manual_seed(0)), expected)
    # a missing base is a clear error
    (tmp_path / "wan" / "transformer" / "config.json").unlink()
    with pytest.raises(ConfigError, match="transformer/config.json"):
        Prophet.from_pretrained(path)


def test_wan_vae_encodes_frames_one_by_one(tmp_path):
    _save_tiny_wan_base(tmp_path / "wan", vae_class="AutoencoderKLWan")
    model = Prophet(_base_config(tmp_path / "wan", lora_rank=4, num_inference_steps=1)).eval()
    assert model.vae_compression == 4 and model.latent_size == SIZE // 4
    latents = model.encode_frames(_frames(2, 3))
    assert latents.shape == (2, 4, 3, SIZE // 4, SIZE // 4)
    assert model.generate(_frames(2), None, _actions(2)).shape == (2, 2, SIZE, SIZE, 3)


def test_a_trained_full_model_switches_to_lora_for_adaptation(tmp_path):
    model = Prophet(_small_config())
    model.configure_finetuning("lora", lora_rank=2)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="already attached"):
        model.configure_finetuning("lora")
    # no pretrained base to refer to: the checkpoint keeps every weight, adapters included
    path = model.save_pretrained(tmp_path / "ckpt")
    assert (path / WEIGHTS_NAME).is_file()
    loaded = Prophet.from_pretrained(path)
    assert loaded.config.finetune == "lora" and dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)


# ----- residual prediction ------------------------------------------------------------------------------
def _still_or_moving_batch(batch: int, rng: np.random.Generator) -> dict:
    """The square world, half of the clips with zero actions and a still square."""
    data = _square_world_batch(batch, rng)
    still = rng.random(batch) < 0.5
    data["actions"][still] = 0.0
    data["future_frames"][still] = data["current_frame"][still][:, None]
    return data


def _train_briefly(config: ProphetConfig, steps: int) -> Prophet:
    torch.manual_seed(0)
    m = Prophet(config)
    rng = np.random.default_rng(0)
    fit = _still_or_moving_batch(64, rng)
    m.fit_action_statistics(fit["actions"])
    if config.predict_residual:
        m.fit_residual_statistics(fit["current_frame"], fit["future_frames"])
    opt = torch.optim.AdamW(m.denoiser_parameters(), lr=2e-3)
    for _ in range(steps):
        loss = m.training_loss(_still_or_moving_batch(8, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_a_residual_prophet_keeps_a_still_scene_still_after_short_training():
    """Zero actions: the residual model's clip stays at the start frame (as the VAE reconstructs it) after a
    short training, much closer than the same model predicting whole latents."""
    rng = np.random.default_rng(5)
    probe = _still_or_moving_batch(6, rng)
    start = probe["current_frame"]
    still = np.zeros((6, 4, 7), np.float32)
    errors = {}
    for residual in (True, False):
        m = _train_briefly(_small_config(use_action_frames=False, predict_residual=residual), steps=120)
        reconstruction = m.decode_latents(m.encode_frames(start[:, None]))
        clip = m.generate(start, None, still, generator=torch.Generator().manual_seed(0))
        errors[residual] = float((clip - reconstruction).abs().mean().detach())
    assert errors[True] < 12.0, errors  # mean absolute error in [0, 255] pixel units
    assert errors[True] < 0.5 * errors[False], errors


def test_a_start_frame_flow_source_begins_sampling_at_the_start_frame_and_keeps_a_still_scene_still():
    """flow_source "start_frame": with no Euler step the clip is the start frame (plus source_noise), and after a
    short training a zero-action clip stays at the start frame, much closer than a flow from pure noise does."""
    rng = np.random.default_rng(5)
    probe = _still_or_moving_batch(6, rng)
    start = probe["current_frame"]
    still = np.zeros((6, 4, 7), np.float32)
    untrained = Prophet(_small_config(use_action_frames=False, flow_source="start_frame", source_noise=1e-4))
    start_latent = untrained.encode_frames(start[:, None])
    source = untrained.generate(start, None, still, num_steps=0, generator=torch.Generator().manual_seed(0))
    copied = untrained.decode_latents(start_latent.expand(-1, -1, untrained.config.frames_per_clip, -1, -1))
    torch.testing.assert_close(source, copied, atol=0.5, rtol=0)
    errors = {}
    for flow_source in ("start_frame", "noise"):
        # source_noise is in normalised latent units; this untrained VAE's latents have std ~0.34, not 1
        m = _train_briefly(_small_config(use_action_frames=False, flow_source=flow_source, source_noise=0.05),
                           steps=120)
        reconstruction = m.decode_latents(m.encode_frames(start[:, None]))
        clip = m.generate(start, None, still, generator=torch.Generator().manual_seed(0))
        errors[flow_source] = float((clip - reconstruction).abs().mean().detach())
    assert errors["start_frame"] < 12.0, errors  # mean absolute error in [0, 255] pixel units
    assert errors["start_frame"] < 0.5 * errors["noise"], errors
    with pytest.raises(ConfigError, match="flow_source"):
        _small_config(flow_source="last_frame")
    with pytest.raises(ConfigError, match="source_noise"):
        _small_config(flow_source="start_frame", source_noise=0.0)


def test_residual_statistics_are_saved_and_old_configs_load_without_the_field(tmp_path):
    m = _train_briefly(_small_config(use_action_frames=False, predict_residual=True), steps=0)
    assert torch.all(m.residual_std != 1.0), "fitted on the clips' latent changes"
    loaded = Prophet.from_pretrained(m.save_pretrained(tmp_path / "residual"))
    assert loaded.config.predict_residual
    torch.testing.assert_close(loaded.residual_std, m.residual_std)

    old = Prophet(_small_config()).save_pretrained(tmp_path / "old")
    data = json.loads((old / CONFIG_NAME).read_text())
    for field in ("predict_residual", "flow_source", "source_noise", "motion_loss_weight", "vae_colour_weight"):
        del data[field]  # saved before these fields existed
    (old / CONFIG_NAME).write_text(json.dumps(data))
    loaded = Prophet.from_pretrained(old).config
    assert loaded.predict_residual is False and loaded.flow_source == "noise" and loaded.motion_loss_weight == 0
    assert loaded.vae_colour_weight == 0
    with pytest.raises(ConfigError, match="predict_residual"):
        Prophet(_small_config()).fit_residual_statistics(_frames(2), _frames(2, 2))


def test_motion_weights_are_one_on_a_still_clip_and_grow_where_the_latents_change():
    m = Prophet(_small_config(motion_loss_weight=3.0))
    start = torch.zeros(2, 4, 1, 8, 8)
    future = torch.zeros(2, 4, 2, 8, 8)
    future[0, :, 0, 2, 3] = 1.0          # clip 0: one latent position of the first future frame changes
    weights = m.motion_weights(future, start)
    assert weights.shape == (2, 1, 2, 8, 8)
    torch.testing.assert_close(weights[1], torch.ones(1, 2, 8, 8))   # clip 1 stands still: the plain mean
    # clip 0's mean change is 1 / (2 frames x 64 positions): the changed position weighs 1 + 3 x 128
    assert weights[0, 0, 0, 2, 3].item() == pytest.approx(1 + 3.0 * 128)
    assert torch.count_nonzero(weights[0] != 1.0) == 1
    with pytest.raises(ConfigError, match="motion_loss_weight"):
        _small_config(motion_loss_weight=-1.0)


def test_the_motion_weighted_loss_equals_the_plain_loss_on_still_clips_and_differs_where_things_move():
    rng = np.random.default_rng(3)
    moving = _square_world_batch(4, rng)
    still = {**moving, "future_frames": np.repeat(moving["current_frame"][:, None], 2, axis=1)}
    losses = {}
    for weight in (0.0, 4.0):
        torch.manual_seed(0)
        m = Prophet(_small_config(use_action_frames=False, motion_loss_weight=weight))
        for name, batch in (("still", still), ("moving", moving)):
            losses[weight, name] = m.training_loss(batch, generator=torch.Generator().manual_seed(1)).item()
        plain = m.training_loss(moving, generator=torch.Generator().manual_seed(1), motion_weighted=False).item()
        losses[weight, "moving, plain mean"] = plain
    assert losses[4.0, "still"] == pytest.approx(losses[0.0, "still"], rel=1e-5)
    assert losses[4.0, "moving"] != pytest.approx(losses[0.0, "moving"], rel=1e-3)
    # what evaluation_loss reports: the same plain mean whatever the weighting, so held-out losses compare
    assert losses[4.0, "moving, plain mean"] == pytest.approx(losses[0.0, "moving"], rel=1e-5)
