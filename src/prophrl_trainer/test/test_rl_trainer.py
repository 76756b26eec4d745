"""RL in imagination on a tiny real setup: random-initialised Prophet, random policy, bags2dataset-layout data."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from prophrl_common.config_io import ConfigError
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.initial_states import InitialStateSampler
from prophrl_trainer.rl_config import RLConfig
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.rollouts import EndEffectorDisplacementReward
from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer, main, run_local_ranks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_smoke_setup(tmp_path_factory.mktemp("rl_setup"))


def _trainer(setup, out, config_path, **kwargs):
    args = build_parser().parse_args(setup.argv(out, 1, config_path))
    trainer, _ = build_trainer(TrainSettings.from_args(args), show_progress=False, **kwargs)
    return trainer


# ----- config ------------------------------------------------------------------------------------------

def test_rl_config_round_trips_through_json_and_maps_variants(tmp_path):
    config = RLConfig(group_size=4, variant="flow_grpo", use_flowscale=False, learning_rate=3e-4)
    path = tmp_path / "rl.json"
    path.write_text(config.to_json())
    loaded = RLConfig.from_json_file(path)
    assert loaded == config
    algorithm = loaded.algorithm
    assert algorithm.group_size == 4 and algorithm.ratio_level == "step" and not algorithm.flowscale.enabled
    assert RLConfig().algorithm.ratio_level == "chunk" and RLConfig().algorithm.flowscale.enabled
    assert RLConfig(variant="fa_grpo_element").algorithm.ratio_level == "element"
    assert RLConfig(variant="fa_grpo_chunk_mean").algorithm.ratio_level == "chunk_mean"
    partial = RLConfig.from_dict({"fa_grpo": {"clip_eps_high": 0.3}, "flowscale": {"alpha": 0.5}})
    assert partial.algorithm.clip_eps_high == 0.3 and partial.algorithm.flowscale.alpha == 0.5


@pytest.mark.parametrize("data, match", [
    ({"group_sise": 8}, "unknown key"),
    ({"group_size": 1}, "group_size"),
    ({"variant": "ppo"}, "variant"),
    ({"reward": "dense"}, "reward"),
    ({"learning_rate": "fast"}, "expected a number"),
    ({"target_kl": -0.1}, "target_kl >= 0"),
    ({"judge_disagreement": -0.5}, "judge_disagreement"),
    ({"validation_states": 4, "eval_every": 0}, "validation_states > 0 needs eval_every"),
    ({"validation_states": -1}, "validation_states must be >= 0"),
    ({"shared_world_model_noise": "yes"}, "shared_world_model_noise"),
    ({"fa_grpo": {"group_size": 4}}, "top level"),
    ({"fa_grpo": {"clip_eps_low": 1.5}}, "clip_eps_low"),
    ({"flowscale": {"alpha": 2.0}}, "alpha"),
])
def test_rl_config_rejects_bad_input_with_one_clear_error(data, match):
    with pytest.raises(ConfigError, match=match):
        RLConfig.from_dict(data)


# ----- initial states -----------------------------------------------------------------------------------

def test_initial_states_come_from_episode_starts_and_are_seeded(setup, tmp_path):
    sampler = InitialStateSampler([setup.data], seed=3)
    index = json.loads((setup.data / "index.json").read_text())
    assert len(sampler) == len(index["episodes"])
    with np.load(setup.data / index["episodes"][1]["shard"]) as shard:
        first_frame, first_pose = shard["frames"][0], shard["ee_pose"][0]
    start = sampler.states[1]
    np.testing.assert_array_equal(start.context_frames[-1], first_frame)
    np.testing.assert_allclose(start.ee_pose, first_pose)
    assert start.instruction == index["episodes"][1]["instruction"] and start.gripper == 0.0
    # two context frames: the start is frame 1, with the gripper command of step 0 in force
    two = InitialStateSampler([setup.data], context_frames=2).states[0]
    assert two.context_frames.shape[0] == 2 and two.gripper == 0.0
    with np.load(setup.data / index["episodes"][0]["shard"]) as shard:
        np.testing.assert_allclose(two.ee_pose, shard["ee_pose"][1])
    # seeded draws, checkpointable state; fixed() is independent of the training draws
    a, b = InitialStateSampler([setup.data], seed=3), InitialStateSampler([setup.data], seed=3)
    fixed = [s.instruction for s in a.fixed(4)]
    state = a.get_state()
    first = [s.instruction for s in a.sample(2)]
    assert first == [s.instruction for s in b.sample(2)]
    a.set_state(state)
    assert [s.instruction for s in a.sample(2)] == first
    assert [s.instruction for s in a.fixed(4)] == fixed
    with pytest.raises(ConfigError, match="not a bags2dataset output"):
        InitialStateSampler([tmp_path])


def test_held_out_validation_states_are_never_drawn_for_training(setup):
    everything = InitialStateSampler([setup.data], seed=3)
    split = InitialStateSampler([setup.data], seed=3, held_out=1)
    assert len(split.validation) == 1 and len(split) == len(everything) - 1
    held = split.validation[0]
    assert any(s is not held and np.array_equal(s.ee_pose, held.ee_pose) for s in everything.states)
    drawn = split.sample(50) + split.fixed(10)
    assert not any(np.array_equal(s.ee_pose, held.ee_pose) for s in drawn), "a validation state was drawn"
    again = InitialStateSampler([setup.data], seed=3, held_out=1, rank=1)
    assert np.array_equal(again.validation[0].ee_pose, held.ee_pose), "every rank holds out the same episodes"
    with pytest.raises(ConfigError, match="at least one must be left for training"):
        InitialStateSampler([setup.data], held_out=len(everything))


# ----- rollouts, termination masks ------------------------------------------------------------------------

def test_early_termination_masks_the_chunks_after_success(setup, tmp_path):
    config = setup.rl_config("masks.json", group_size=6, states_per_update=2, chunks_per_rollout=3)
    # a low success threshold, so some rollouts succeed after their first or second chunk
    scorer = EndEffectorDisplacementReward((0.0, -1.0, 0.0), scale=0.01, threshold=0.7)
    trainer = _trainer(setup, tmp_path / "run", config, scorer=scorer)
    starts = trainer.sampler.sample(2)
    imagined = trainer.imagine(starts, [11, 12], 6, "sde", trainer.generator, stop_when_done=False)
    n, g, c = imagined.mask.shape
    assert (n, g, c) == (2, 6, 3)
    states = imagined.states.view(n, g, c, 8).numpy()
    probs_after_first = 1 / (1 + np.exp(-(-(states[:, :, 1, 1] - states[:, :, 0, 1])) / 0.01))
    first_success = probs_after_first >= 0.7
    assert first_success.any() and not first_success.all(), "the test needs both outcomes after chunk 1"
    np.testing.assert_array_equal(imagined.length[first_success], 1)
    np.testing.assert_allclose(imagined.rewards[first_success], probs_after_first[first_success], rtol=1e-5)
    for i in range(n):
        for j in range(g):
            expected = (np.arange(c) < imagined.length[i, j]).astype(np.float32)
            np.testing.assert_array_equal(imagined.mask[i, j], expected)
    assert imagined.success[first_success].all()
    # the rollout batch keeps exactly the valid chunks
    adv = torch.zeros(n * g)
    batch = trainer.rollout_batch(imagined, adv, drop_masked=True)
    assert batch.size == int(imagined.mask.sum()) and batch.mask.all()
    full = trainer.rollout_batch(imagined, adv, drop_masked=False)
    assert full.size == n * g * c and full.mask.sum() == imagined.mask.sum()
    # without early termination every chunk counts and only the full clip is judged
    trainer.config = dataclasses.replace(trainer.config, early_termination=False)
    plain = trainer.imagine(starts, [11, 12], 6, "sde", trainer.generator)
    assert plain.mask.all() and (plain.length == 3).all()


def test_shared_world_model_noise_reaches_the_imagination_and_needs_an_in_process_backend(setup, tmp_path):
    """shared_world_model_noise: a group's rollouts draw common world-model noise (ImaginedRollouts tests
    that equal actions then imagine equal clips); the same groups imagine differently than with independent
    noise. A backend that cannot share noise (the Imagine action client) is refused."""
    scorer = EndEffectorDisplacementReward((0.0, -1.0, 0.0), scale=0.01)
    runs = {}
    for shared in (True, False):
        trainer = _trainer(setup, tmp_path / f"shared{shared}", setup.rl_config(
            f"shared{shared}.json", group_size=4, chunks_per_rollout=1, early_termination=False,
            shared_world_model_noise=shared), scorer=scorer)
        assert trainer.backend.shared_noise is shared
        groups = trainer.backend.open(trainer.sampler.fixed(1), 4, [3])
        chunks = np.zeros((4, trainer.backend.action_horizon, 7), np.float32)
        trainer.backend.step(groups, [chunks])
        runs[shared] = groups[0].frames
    assert (runs[True][1:] == runs[True][:1]).all() and (runs[False][1:] != runs[False][:1]).any()

    class NoSharing:
        action_horizon = trainer.backend.action_horizon

    with pytest.raises(ConfigError, match="shared_world_model_noise needs in-process imagination"):
        _trainer(setup, tmp_path / "ros", setup.rl_config("ros.json", shared_world_model_noise=True),
                 backend=NoSharing(), scorer=scorer)


def test_horizon_mismatch_is_one_clear_error(setup, tmp_path):
    from prophrl_policy.configuration_vla import get_vla_config

    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=7))
    policy.save_pretrained(tmp_path / "wrong")
    args = build_parser().parse_args(dataclasses.replace(setup, policy=tmp_path / "wrong").argv(tmp_path / "o", 1))
    with pytest.raises(ConfigError, match="horizon is 7 but the world model executes 4"):
        build_trainer(TrainSettings.from_args(args), show_progress=False)


def test_several_judges_score_as_an_ensemble_with_the_configs_disagreement_weight(setup, tmp_path):
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_ensemble import JudgeEnsemble
    from prophrl_worldmodel.modeling_judge import RewardJudge

    judges = []
    for seed, threshold in ((0, 0.4), (1, 0.6)):
        torch.manual_seed(seed)
        judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32, num_frames=4))
        judges.append(judge.eval().with_threshold(threshold).save_pretrained(tmp_path / f"judge_{seed}"))
    argv = setup.argv(tmp_path / "run", 1, setup.rl_config("ensemble.json", judge_disagreement=2.5), judge=judges[0])
    argv.insert(argv.index(str(judges[0])) + 1, str(judges[1]))
    trainer, _ = build_trainer(TrainSettings.from_args(build_parser().parse_args(argv)), show_progress=False)
    ensemble = trainer.scorer.judge
    assert isinstance(ensemble, JudgeEnsemble) and len(ensemble.judges) == 2 and ensemble.disagreement == 2.5
    assert trainer.scorer.threshold == pytest.approx(0.5)
    assert trainer.run_info["reward"] == f"judge:{judges[0]},{judges[1]}"
    # a config saved before the field existed loads with the default weight
    saved = json.loads(RLConfig().to_json())
    del saved["judge_disagreement"]
    assert RLConfig.from_dict(saved, complete=True).judge_disagreement == RLConfig().judge_disagreement


def test_a_judge_trained_on_replays_sampled_with_other_euler_steps_is_warned(setup, tmp_path):
    """The Euler steps of a judge's imagined training clips (its summary, as `prophrl judge train` records them)
    against those RL imagines with: a mismatch is warned, naming the judge and the fix; a match, a judge without
    imagined clips, or one whose summary is missing or malformed is not."""
    import warnings

    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_training import JUDGE_SUMMARY
    from prophrl_worldmodel.modeling_judge import RewardJudge

    judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32, num_frames=4))
    config_path = setup.rl_config("steps.json", imagination_steps=2)
    cases = {"matched": '{"imagined_num_steps": 2}', "real clips only": '{"imagined_num_steps": null}',
             "no summary": None, "malformed": "[2", "one step": '{"imagined_num_steps": 1}'}
    for name, summary in cases.items():
        judge_dir = judge.eval().save_pretrained(tmp_path / name.replace(" ", "_"))
        if summary is not None:
            (judge_dir / JUDGE_SUMMARY).write_text(summary)
        argv = setup.argv(tmp_path / f"run_{judge_dir.name}", 1, config_path, judge=judge_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_trainer(TrainSettings.from_args(build_parser().parse_args(map(str, argv))), show_progress=False)
        messages = [str(w.message) for w in caught if "Euler steps" in str(w.message)]
        if name == "one step":
            assert messages == [
                "the judge learned Prophet's replays sampled with another number of Euler steps per clip than the 2 "
                f"this run imagines with ({judge_dir} (1)): it scores frames unlike those it was trained on, which "
                "RL learns to exploit (train it with `prophrl judge train --imagined-from PROPHET --num-steps 2`)"]
        else:
            assert messages == [], name


def test_imagination_steps_0_are_the_prophet_s_own_when_a_judge_s_steps_are_checked(setup, tmp_path):
    """imagination_steps 0 imagines with the Prophet's num_inference_steps: a judge of replays sampled with them is
    not warned, one of replays sampled with one more step is, against the Prophet's number."""
    import warnings

    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_training import JUDGE_SUMMARY
    from prophrl_worldmodel.modeling_judge import RewardJudge
    from prophrl_worldmodel.modeling_prophet import Prophet

    own = Prophet.from_pretrained(setup.prophet).config.num_inference_steps
    judge = RewardJudge(get_judge_config("tiny", image_size=32, cnn_channels=(8, 16), hidden_dim=32, num_frames=4))
    config_path = setup.rl_config("own_steps.json", imagination_steps=0)
    for steps in (own, own + 1):
        judge_dir = judge.eval().save_pretrained(tmp_path / f"judge_{steps}")
        (judge_dir / JUDGE_SUMMARY).write_text(f'{{"imagined_num_steps": {steps}}}')
        argv = setup.argv(tmp_path / f"run_{steps}", 1, config_path, judge=judge_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_trainer(TrainSettings.from_args(build_parser().parse_args(map(str, argv))), show_progress=False)
        messages = [str(w.message) for w in caught if "Euler steps" in str(w.message)]
        if steps == own:
            assert messages == []
        else:
            assert len(messages) == 1
            assert f"than the {own} this run imagines with ({judge_dir} ({steps}))" in messages[0]


# ----- whole runs --------------------------------------------------------------------------------------

def test_a_short_run_checkpoints_logs_and_pushes(setup, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = setup.rl_config("short.json", checkpoint_every=2, keep_checkpoints=2, eval_every=2, noise_level=0.5)
    out = tmp_path / "run"
    pushed = []
    trainer = _trainer(setup, out, config, on_checkpoint=lambda path, update: pushed.append((path, update)))
    history = trainer.run(5)
    assert [m["update"] for m in history] == [1, 2, 3, 4, 5]
    assert [u for _, u in pushed] == [2, 4, 5], "checkpoints every 2 updates and after the last"
    assert [n for n, _ in ckpt.list_checkpoints(out / "checkpoints")] == [4, 5], "keeps the newest 2"
    trained = VLAPolicy.from_pretrained(pushed[-1][0])
    sft = VLAPolicy.from_pretrained(setup.policy)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), sft.state_dict().values()))
    assert sft.config.sampler == SamplerConfig(3, 0.7)
    assert trained.config.sampler == SamplerConfig(3, 0.5), "a checkpoint records the sampler RL trained with"
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == [1, 2, 3, 4, 5]
    assert "eval/success_rate" in lines[1] and "eval/success_rate" not in lines[0]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rollout/reward_mean", "rollout/success_rate", "train/kl", "train/clip_fraction", "train/approx_kl_old",
            "flowscale/w_00", "eval/success_rate"} <= tags
    assert [e.step for e in events.Scalars("rollout/reward_mean")] == [1, 2, 3, 4, 5]
    weights = [events.Scalars(f"flowscale/w_{k:02d}")[0].value for k in range(3)]
    assert weights[0] > weights[-1], "FlowScale gives the noisy early steps the larger weights"
    # the CLI refuses to overwrite the run, and prints a summary table when it runs
    assert main(setup.argv(out, 6, config)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(setup.argv(out, 6, config, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "update  reward" in printed and "6 updates" in printed
    assert "on 1 rank(s) x 1 torch thread(s)" in printed, "the session line names the threads it ran on"


@pytest.mark.parametrize("threads", ["-1", "two"])
def test_bad_threads_is_a_usage_error_before_any_work(setup, tmp_path, capsys, threads):
    """Regression: --threads -1 reached torch.set_num_threads and died with a RuntimeError traceback."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(setup.argv(out, 1, setup.rl_config("bad_threads.json"), "--threads", threads))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--threads: a whole number >= 0 (0: torch's default), got '{threads}'" in err and "Traceback" not in err
    assert not out.exists()


def test_checkpoint_selection_keeps_the_policy_that_scored_best_on_the_held_out_states(setup, tmp_path):
    from prophrl_trainer.report import resolve_policy

    config = setup.rl_config("select.json", validation_states=1, eval_every=2, checkpoint_every=2,
                             keep_checkpoints=5, learning_rate=3e-3)
    out = tmp_path / "run"
    trainer = _trainer(setup, out, config)
    trainer.run(4)
    evaluated = [m for m in trainer.history if "eval/reward_mean" in m]
    assert [m["update"] for m in evaluated] == [2, 4]
    selection = ckpt.read_selection(out)
    assert selection == trainer.selected and selection["validation_states"] == 1
    scores = {m["update"]: m["eval/reward_mean"] for m in evaluated}
    assert selection["eval/reward_mean"] >= max(scores.values())
    chosen = VLAPolicy.from_pretrained(out / ckpt.SELECTED_POLICY_DIR).state_dict()
    if selection["update"] == 0:   # the SFT policy beat every update on the held-out states
        expected = VLAPolicy.from_pretrained(setup.policy).state_dict()
    else:
        assert selection["eval/reward_mean"] == scores[selection["update"]]
        assert all(scores[u] < selection["eval/reward_mean"] for u in scores if u < selection["update"])
        expected = VLAPolicy.from_pretrained(out / "checkpoints" / ckpt.checkpoint_name(selection["update"])
                                             / ckpt.POLICY_DIR).state_dict()
    assert all(torch.equal(chosen[k], expected[k]) for k in expected)
    # the SFT policy was scored on the same states before the first update: it is the bar every update must beat
    baseline = _trainer(setup, tmp_path / "baseline", config).evaluate()
    assert selection["eval/reward_mean"] >= baseline["eval/reward_mean"]
    # `prophrl eval` takes the selected policy and keeps the run's learning curves
    source = resolve_policy("RL", out / ckpt.SELECTED_POLICY_DIR)
    assert source.run_dir == out and [m["update"] for m in source.progress] == [1, 2, 3, 4]
    # a resumed run keeps the selection record and goes on selecting; the run directory still passes its check
    args = build_parser().parse_args(setup.argv(out, 6, config, "--resume"))
    resumed, _ = build_trainer(TrainSettings.from_args(args), show_progress=False)
    assert resumed.selected == selection
    resumed.run(6)
    assert ckpt.read_selection(out)["eval/reward_mean"] >= selection["eval/reward_mean"]


def test_the_reward_signal_reaches_the_gradient(setup, tmp_path):
    """With a reward for moving the end effector right (-y), the mean reward rises and the deterministic
    policy's mean y action turns negative; the SFT policy's was ~0."""
    config = setup.rl_config("learn.json", group_size=8, states_per_update=2, chunks_per_rollout=1,
                             learning_rate=3e-3, checkpoint_every=100, keep_checkpoints=1)
    trainer = _trainer(setup, tmp_path / "run", config)
    history = trainer.run(14)
    rewards = [m["rollout/reward_mean"] for m in history]
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.15, rewards

    sft = VLAPolicy.from_pretrained(setup.policy)
    obs = Observation(torch.rand(4, 3, 32, 32), ["lift the red cube"] * 4, torch.zeros(4, 8))
    g = torch.Generator().manual_seed(0)
    sampler = SamplerConfig(num_steps=3)
    before = sft.predict_action_chunk(obs, sampler=sampler, generator=g).actions[..., 1].mean().item()
    g = torch.Generator().manual_seed(0)
    after = trainer.policy.predict_action_chunk(obs, sampler=sampler, generator=g).actions[..., 1].mean().item()
    assert after < before - 0.005, (before, after)  # metres per step: moved right by > 5 mm per step


# ----- data parallel ------------------------------------------------------------------------------------

def test_data_parallel_ranks_end_with_identical_parameters(setup, tmp_path):
    config = setup.rl_config("ddp.json", checkpoint_every=2)
    run_local_ranks(2, setup.argv(tmp_path / "run", 2, config), params_out=tmp_path / "params", start_method="fork")
    rank0, rank1 = (load_file(str(tmp_path / "params" / f"rank{r}.safetensors")) for r in (0, 1))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    rewards = []
    for r in (0, 1):
        with safe_open(str(tmp_path / "params" / f"rank{r}.safetensors"), "pt") as f:
            rewards.append(json.loads(f.metadata()["rewards"]))
    assert rewards[0] != rewards[1], "each rank imagines its own groups"
    sft = VLAPolicy.from_pretrained(setup.policy).state_dict()
    assert any(not torch.equal(rank0[k], sft[k]) for k in rank0), "the update changed the weights"
    # rank 0 alone (no gradient averaging) ends elsewhere: the ranks agree because gradients were averaged
    alone = _trainer(setup, tmp_path / "alone", config)
    alone.run(2)
    alone_state = alone.policy.state_dict()
    assert any(not torch.allclose(rank0[k], alone_state[k]) for k in rank0)
    # one checkpoint directory, written by rank 0, with every rank's RNG state
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = json.loads((latest / ckpt.STATE_JSON).read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_bf16_mixed_precision_keeps_the_first_ratio_at_one(setup, tmp_path):
    """mixed_precision bf16: rollouts and the update run the policy's networks under autocast, the log-probs and
    the ratio stay float32, and an update that has not moved the weights sees ratio 1 (within 1e-4)."""
    from prophrl_trainer.fa_grpo import policy_update

    config = setup.rl_config("bf16.json", mixed_precision="bf16")
    trainer = _trainer(setup, tmp_path / "run", config)
    policy = trainer.policy
    assert policy.compute_dtype == torch.bfloat16
    torch.manual_seed(3)
    with torch.no_grad():  # the output layer starts at zero; give the velocity something to say
        policy.action_out[1].weight.normal_(0, 0.3)
    starts = trainer.sampler.sample(2)
    imagined = trainer.imagine(starts, [5, 6], 4, "sde", trainer.generator)
    batch = trainer.rollout_batch(imagined, torch.randn(8), drop_masked=True)
    frozen = torch.optim.SGD(policy.parameters(), lr=0.0)

    def first_ratio():
        stats = policy_update(policy, frozen, batch, trainer.config.algorithm, trainer.config.chunk_sampler, epochs=1,
                              minibatch_size=None, generator=torch.Generator().manual_seed(0))
        return stats["ratio_mean"]

    assert abs(first_ratio() - 1.0) < 1e-4
    # the same rollouts re-scored in float32 are not ratio 1: bf16 really ran, and the test would see a mismatch
    policy.compute_dtype = None
    assert abs(first_ratio() - 1.0) > 1e-3


# ----- the policy's eyes in imagination ----------------------------------------------------------------

def test_a_policy_that_reduces_frames_to_prophets_size_trains_on_them_and_any_other_size_is_warned(setup, tmp_path):
    import warnings

    base = VLAPolicy.from_pretrained(setup.policy)
    config_path = setup.rl_config("eyes.json", states_per_update=1, group_size=2)
    for camera_size, warned in ((32, False), (16, True)):
        policy_dir = tmp_path / f"policy_{camera_size}"
        VLAPolicy(dataclasses.replace(base.config, camera_size=camera_size).validate(),
                  base.norm_stats).save_pretrained(policy_dir)
        argv = [policy_dir if a == str(setup.policy) else a for a in setup.argv(tmp_path / f"run_{camera_size}", 1,
                                                                                config_path)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer, _ = build_trainer(TrainSettings.from_args(build_parser().parse_args(map(str, argv))),
                                       show_progress=False)
        messages = [str(w.message) for w in caught if "camera frames" in str(w.message)]
        if warned:
            assert messages == ["the policy reduces camera frames to 16 px first but the world model imagines 32 px "
                                "frames: in imagination it sees them at another resolution than on the robot (SFT "
                                "it with --camera-size 32)"]
        else:
            assert messages == []
            metrics = trainer.run(1)[-1]
            assert np.isfinite(metrics["train/loss"]) and metrics["update"] == 1
