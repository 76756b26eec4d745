import json
import shutil

import numpy as np
import pytest

from prophrl_common.chunks import POLICY_STATE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer.sft import SFTConfig, load_demonstrations, policy_states, target_chunks, train_sft
from prophrl_data.conversion import bags2dataset


def test_targets_are_the_executed_actions_from_each_frame_on():
    actions = np.arange(4 * 7, dtype=np.float32).reshape(4, 7)
    actions[:, 6] = [0, 0, 1, 1]
    chunks = target_chunks(actions, horizon=3)
    assert chunks.shape == (4, 3, 7)
    np.testing.assert_array_equal(chunks[1], actions[1:4])
    # past the end: zero motion, the last gripper command held
    np.testing.assert_array_equal(chunks[3, 1:, :6], 0)
    np.testing.assert_array_equal(chunks[3, 1:, 6], 1)


def test_state_is_pose_and_the_gripper_command_in_force():
    ee_pose = np.tile(np.arange(7, dtype=np.float32), (3, 1))
    actions = np.zeros((3, 7), np.float32)
    actions[:, 6] = [1, 0, 1]
    states = policy_states(ee_pose, actions)
    np.testing.assert_array_equal(states[:, 7], [0, 1, 0])  # the previous step's command
    np.testing.assert_array_equal(states[:, :7], ee_pose)


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    collect_direct(CollectSettings(episodes=2, max_steps=120, image_size=64), root / "bags", show_progress=False)
    bags2dataset([root / "bags"], root / "dataset", "panda_sim")
    return root / "dataset"


def test_sft_learns_from_recorded_demonstrations_and_saves_a_loadable_policy(demo_dataset, tmp_path):
    config = get_vla_config("tiny", hidden_dim=48, num_layers=1, image_size=48, horizon=6)
    data = load_demonstrations(demo_dataset, config.horizon)
    assert data.frames.shape[1:] == (64, 64, 3) and data.chunks.shape[1:] == (6, 7) and len(data) > 50
    path, losses = train_sft(data, config, SFTConfig(steps=120, batch_size=16, learning_rate=1e-3, warmup_steps=10,
                                                     log_every=20), tmp_path / "policy", show_progress=False)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    policy = VLAPolicy.from_pretrained(path)
    np.testing.assert_allclose(policy.norm_stats.action_mean, data.chunks.reshape(-1, 7).mean(0), rtol=1e-4, atol=1e-6)
    assert json.loads((path / "sft.json").read_text())["num_samples"] == len(data)
    # The checkpoint records what it is for: the dataset's robot, ee deltas, the policy state layout.
    assert (policy.embodiment.robot, policy.embodiment.action_space) == ("panda_sim", "ee_delta_7d")
    assert policy.embodiment.state_names == POLICY_STATE_NAMES and policy.embodiment.control_period_s == pytest.approx(0.05)


def test_sft_leaves_out_episodes_of_unknown_outcome_with_a_warning(demo_dataset, tmp_path):
    """A recovered bag whose end did not survive has success null in the index: no demonstration."""
    dataset = tmp_path / "dataset"
    shutil.copytree(demo_dataset, dataset)
    index = json.loads((dataset / "index.json").read_text())
    index["episodes"][0]["success"] = None
    (dataset / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="SFT leaves out 1 episode.*outcome is unknown"):
        data = load_demonstrations(dataset, 6)
    assert set(np.unique(data.episode_index)) == {i for i, e in enumerate(index["episodes"]) if e["success"]}
    assert 0 not in data.episode_index


def test_policy_verbs_refuse_a_device_this_machine_lacks_before_any_work(demo_dataset, tmp_path, capsys):
    from prophrl.cli import main

    assert main(["policy", "sft", "--dataset", str(demo_dataset), "--out", str(tmp_path / "p"), "--steps", "1",
                 "--device", "cuda:99"]) == 2
    assert "--device cuda:99" in capsys.readouterr().err and not (tmp_path / "p" / "model.safetensors").exists()


def test_the_sim_controller_samples_with_the_requested_number_of_denoising_steps(tmp_path, capsys):
    import torch

    from prophrl.cli import main
    from prophrl_nn.flow_matching import SamplerConfig
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import Observation
    from prophrl_policy.transforms import policy_state
    from prophrl_sim.arm_sim import ArmSim
    from prophrl_trainer.sim_rollout import PolicyController

    torch.manual_seed(0)
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=4))
    with torch.no_grad():
        policy.action_out[1].weight.normal_(0, 0.1)
    with ArmSim("panda_sim", "lift", image_width=64, image_height=64) as sim:
        observation = sim.reset(3)
        image = sim.render()
    obs = Observation.from_frames(image[None], [sim.instruction], policy_state(observation.ee_pose.vector, 0.0)[None])

    def expected(sampler):
        return policy.predict_action_chunk(obs, sampler=sampler, generator=torch.Generator().manual_seed(7)).actions[0]

    def controller(num_steps):
        return torch.as_tensor(PolicyController(policy, seed=7, num_steps=num_steps).chunk(
            image, sim.instruction, observation, 0.0))

    own = policy.config.sampler
    torch.testing.assert_close(controller(0), expected(own))
    torch.testing.assert_close(controller(2), expected(SamplerConfig(2, own.noise_level)))
    assert not torch.allclose(controller(2), controller(0), atol=1e-4)
    policy.save_pretrained(tmp_path / "policy")
    assert main(["policy", "eval", "--checkpoint", str(tmp_path / "policy"), "--num-steps", "-1"]) == 2
    assert "--num-steps must be >= 0" in capsys.readouterr().err


def test_sft_refuses_a_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(ConfigError, match="not a bags2dataset output"):
        load_demonstrations(tmp_path, 10)



@pytest.mark.slow
def test_sft_policy_beats_an_untrained_policy_in_the_sim(sft_lift_policy):
    """Success measured in the physics sim on the demonstrations' own initial states (fixture in conftest.py).

    Held-out generalisation against the demo budget is measured by bench/sft_budget.py, not here."""
    from prophrl_trainer.evaluation import EvalSettings, evaluate_policy

    losses = sft_lift_policy.losses
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])
    settings = EvalSettings(episodes=len(sft_lift_policy.demo_seeds), first_seed=sft_lift_policy.demo_seeds[0],
                            max_steps=150, image_size=sft_lift_policy.image_size)
    trained_policy = VLAPolicy.from_pretrained(sft_lift_policy.path)
    trained = evaluate_policy(trained_policy, settings, show_progress=False)
    untrained = evaluate_policy(VLAPolicy(trained_policy.config, trained_policy.norm_stats), settings,
                                show_progress=False)
    assert sum(trained.successes) >= 2, trained
    assert sum(trained.successes) >= sum(untrained.successes) + 2, (trained, untrained)


def test_sft_overwrite_replaces_a_previous_sft_checkpoint_that_records_its_embodiment(demo_dataset, tmp_path):
    """embodiment.json is one of the files an SFT checkpoint holds: --overwrite of a previous SFT run replaces it."""
    config = get_vla_config("tiny", hidden_dim=16, num_layers=1, image_size=32, horizon=6)
    data = load_demonstrations(demo_dataset, config.horizon)
    cfg = SFTConfig(steps=2, batch_size=4, warmup_steps=1, log_every=1)
    first, _ = train_sft(data, config, cfg, tmp_path / "policy", show_progress=False)
    assert (first / "embodiment.json").is_file()
    before = VLAPolicy.from_pretrained(first).action_pos.detach().clone()
    second, _ = train_sft(data, config, SFTConfig(steps=2, batch_size=4, warmup_steps=1, log_every=1, seed=1),
                          tmp_path / "policy", show_progress=False, overwrite=True)
    assert second == first and not np.allclose(VLAPolicy.from_pretrained(second).action_pos.detach(), before)


# ----- imagined views ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_prophet(tmp_path_factory):
    """A random-initialised 32 px Prophet, saved (what --imagined-views reads)."""
    import torch

    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet

    torch.manual_seed(0)
    config = get_prophet_config("tiny", image_size=32, num_layers=1, head_dim=16, ffn_dim=32, freq_dim=32,
                                context_dim=32)
    path = tmp_path_factory.mktemp("prophet") / "prophet"
    Prophet(config).eval().save_pretrained(path)
    return path


def test_imagined_views_are_prophets_clips_one_chunk_ahead_of_each_recorded_frame(demo_dataset, tiny_prophet):
    import torch

    from prophrl_trainer.imagined_views import imagine_views
    from prophrl_worldmodel.clips import ClipSampler, load_episodes
    from prophrl_worldmodel.modeling_prophet import Prophet

    prophet = Prophet.from_pretrained(tiny_prophet).eval()
    config = prophet.config
    span = config.frames_per_clip * config.actions_per_frame
    episodes = load_episodes(demo_dataset, config.image_size)
    views = imagine_views(prophet, episodes, num_steps=2, batch_size=16, seed=3, show_progress=False)
    for episode, view in zip(episodes, views):
        assert view.frames.shape == (len(episode), 32, 32, 3)
        np.testing.assert_array_equal(view.valid, np.arange(len(episode)) >= span)
        assert not view.frames[:span].any()
    # the first batch, generated directly from the recorded context at step s: its last frame is the view at s + span
    sampler = ClipSampler(episodes, config)
    batch = sampler.batch(range(16))
    clip = prophet.generate(batch["current_frame"], batch["history_frames"], batch["actions"], 2,
                            torch.Generator().manual_seed(3), action_frames=batch["action_frames"],
                            calibrated=batch["calibrated"])
    expected = clip[:, -1].round().clamp(0, 255).to(torch.uint8).numpy()
    for frame, (e, s) in zip(expected, sampler.starts(range(16))):
        np.testing.assert_array_equal(views[e].frames[s + span], frame)
    again = imagine_views(prophet, episodes, num_steps=2, batch_size=16, seed=3, show_progress=False)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(views, again))


def test_a_share_of_the_samples_with_an_imagined_view_read_it_and_the_others_the_camera():
    import dataclasses

    import torch

    from prophrl_policy.modeling_vla import Observation
    from prophrl_trainer.sft import DemoData, with_imagined_views

    n = 8
    config = get_vla_config("tiny", image_size=16)
    data = DemoData(np.full((n, 32, 32, 3), 255, np.uint8), np.zeros((n, 8), np.float32),
                    np.zeros((n, 4, 7), np.float32), ["lift"] * n, np.zeros(n, int))
    data = dataclasses.replace(data, imagined=np.zeros((n, 32, 32, 3), np.uint8),
                               imagined_valid=np.arange(n) % 2 == 0)
    indices = torch.arange(n)

    def images(share):
        obs = Observation.from_frames(data.frames, data.instructions, data.states, config)
        return with_imagined_views(obs, data, indices, share, config, torch.Generator().manual_seed(0)).images

    dark = images(1.0).flatten(1).amax(1) == 0
    np.testing.assert_array_equal(dark.numpy(), data.imagined_valid)  # every valid sample, no other
    assert not (images(0.0).flatten(1).amax(1) == 0).any()
    half = images(0.5).flatten(1).amax(1) == 0
    assert not half[~torch.from_numpy(data.imagined_valid)].any()  # drawn only among the samples with a view
    with pytest.raises(ConfigError, match="imagined_view_share must be in"):
        SFTConfig(imagined_view_share=1.5)


def test_policy_sft_with_imagined_views_records_them_and_refuses_a_missing_world_model(demo_dataset, tiny_prophet,
                                                                                       tmp_path, capsys):
    from prophrl.cli import main

    out = tmp_path / "policy"
    assert main(["policy", "sft", "--dataset", str(demo_dataset), "--out", str(out), "--steps", "3",
                 "--batch-size", "8", "--imagined-views", str(tiny_prophet), "--imagined-share", "1",
                 "--imagined-steps", "1"]) == 0
    record = json.loads((out / "sft.json").read_text())
    from prophrl_worldmodel.modeling_prophet import Prophet

    prophet_config = Prophet.from_pretrained(tiny_prophet).config
    span = prophet_config.frames_per_clip * prophet_config.actions_per_frame  # no view before the first chunk
    episodes = len(set(load_demonstrations(demo_dataset, 6).episode_index.tolist()))
    assert record["imagined_views"] == {"world_model": str(tiny_prophet),
                                        "samples": record["num_samples"] - span * episodes}
    assert record["sft_config"]["imagined_view_share"] == 1.0
    capsys.readouterr()
    assert main(["policy", "sft", "--dataset", str(demo_dataset), "--out", str(tmp_path / "p2"), "--steps", "1",
                 "--imagined-views", str(tmp_path / "no_prophet")]) == 2
    err = capsys.readouterr().err
    assert "no_prophet" in err and "Traceback" not in err and not (tmp_path / "p2" / "model.safetensors").exists()
    data = load_demonstrations(demo_dataset, 6)
    with pytest.raises(ConfigError, match="needs demonstrations with imagined views"):
        train_sft(data, get_vla_config("tiny"), SFTConfig(steps=1, imagined_view_share=0.5), tmp_path / "p3",
                  show_progress=False)
