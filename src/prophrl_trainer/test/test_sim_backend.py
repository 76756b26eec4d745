"""RL with the physics sim in Prophet's place (`prophrl train --sim`): real robosuite arms executing the policy's
chunks, the sim's own success as the reward."""

import json

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_sim.arm_sim import ArmSim
from prophrl_trainer.imagined_rollouts import ground_truth
from prophrl_trainer.initial_states import InitialStateSampler
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.sim_backend import SimRollouts, SimSuccessScorer, sim_starts
from prophrl_trainer.sim_rollout import ExpertController
from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer, main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_smoke_setup(tmp_path_factory.mktemp("sim_rl_setup"))


def _rows(direction_y: float, horizon: int) -> np.ndarray:
    rows = np.zeros((horizon, 7), np.float32)
    rows[:, 1] = direction_y
    return rows


def test_sim_starts_are_the_sim_seeds_first_frames():
    starts = sim_starts("panda_sim", "lift", 2, first_seed=900_010)
    with ArmSim("panda_sim", "lift") as sim:
        for start, seed in zip(starts, (900_010, 900_011)):
            pose = sim.reset(seed).ee_pose
            assert start.seed == seed and start.instruction == sim.instruction
            np.testing.assert_array_equal(start.context_frames[-1], sim.render())
            np.testing.assert_allclose(start.ee_pose, pose.vector)
    assert not np.array_equal(starts[0].context_frames, starts[1].context_frames), "two seeds, two scenes"
    sampler = InitialStateSampler.from_starts(starts, seed=1, held_out=1)
    assert len(sampler.validation) == 1 and len(sampler) == 1 and sampler.validation[0] is not sampler.states[0]
    with pytest.raises(ConfigError, match="no initial states"):
        InitialStateSampler.from_starts([])


def test_sim_rollouts_follow_their_actions_deterministically_and_reset_for_the_next_group():
    starts = sim_starts("panda_sim", "lift", 1)
    backend = SimRollouts("panda_sim", "lift", 4)
    try:
        (group,) = backend.open(starts, 3, [0])
        y0 = group.state[0, 1]
        np.testing.assert_array_equal(group.current_frames[0], starts[0].context_frames[-1])
        chunk = np.stack([_rows(0.005, 4), _rows(-0.005, 4), _rows(0.005, 4)])
        for _ in range(2):
            backend.step([group], [chunk])
        assert group.clips[0].shape == (3, 4, 128, 128, 3) and len(group.states) == 3
        moved = group.state[:, 1] - y0
        assert moved[0] > 0.015 and moved[1] < -0.015, f"the arm did not follow +y / -y: {moved}"
        np.testing.assert_array_equal(group.state[0], group.state[2])
        np.testing.assert_array_equal(group.frames[0], group.frames[2])
        np.testing.assert_array_equal(group.current_frames, group.clips[-1][:, -1])
        assert not group.success.any(), "moving sideways does not lift the cube"
        backend.close([group])
        (again,) = backend.open(starts, 3, [0])
        assert len(backend._all) == 3, "the sims are reused, not created again"
        np.testing.assert_allclose(again.state[:, :7], np.repeat(starts[0].ee_pose[None], 3, 0), atol=1e-6)
        np.testing.assert_array_equal(again.current_frames[1], starts[0].context_frames[-1])
        backend.close([again])
    finally:
        backend.shutdown()


def test_the_sim_success_reward_is_the_sim_task_check():
    """The scripted expert's chunks lift the cube in one rollout, zeros do nothing in the other: the reward is
    the sim's own success, 1 and 0, and only the last frame of each chunk is rendered without a judge."""
    starts = sim_starts("panda_sim", "lift", 1)
    backend = SimRollouts("panda_sim", "lift", 10, every_frame=False)
    try:
        (group,) = backend.open(starts, 2, [0])
        expert = ExpertController("lift", backend._all[0].sim.control_period_s)
        expert.reset(starts[0].seed)
        for _ in range(30):
            arm = group.handle[0]
            lift = expert.chunk(None, "", arm.observation, arm.gripper)
            backend.step([group], [np.stack([lift, np.zeros_like(lift)])])
            if group.success[0]:
                break
        assert group.clips[0].shape == (2, 1, 128, 128, 3)
        truth = [ground_truth(group, j) for j in range(2)]
        assert truth == [True, False], f"the expert should lift within 300 steps, zeros should not: {truth}"
        probs, decisions = SimSuccessScorer().score(list(group.frames), ["", ""], list(group.state_history), truth=truth)
        np.testing.assert_array_equal(probs, [1.0, 0.0])
        np.testing.assert_array_equal(decisions, [True, False])
        with pytest.raises(ConfigError, match="--sim"):
            SimSuccessScorer().score(list(group.frames), ["", ""], list(group.state_history))
        group.success = None
        with pytest.raises(ConfigError, match="only rollouts in the sim know"):
            ground_truth(group, 0)
        backend.close([group])
    finally:
        backend.shutdown()


def test_the_sim_reward_is_refused_where_the_world_cannot_know_success(setup, tmp_path):
    args = build_parser().parse_args(setup.argv(tmp_path / "run", 1, setup.rl_config()))
    with pytest.raises(ConfigError, match="does not know"):
        build_trainer(TrainSettings.from_args(args), show_progress=False, scorer=SimSuccessScorer())


@pytest.mark.parametrize("argv, message", [
    (["--world-model", "W", "--sim-reward", "--data", "D"], "--sim-reward is the sim's own success"),
    (["--sim", "panda_sim/fly", "--sim-reward"], "--sim wants ROBOT/TASK"),
    (["--sim", "franka_fr3/lift", "--sim-reward"], "--sim wants ROBOT/TASK"),
    (["--sim", "panda_sim/lift", "--sim-reward", "--data", "D"], "--data is for --world-model"),
    (["--world-model", "W", "--test-reward", "ee_right"], "--data is needed"),
    (["--world-model", "W", "--test-reward", "ee_right", "--data", "D", "--mine-clips"],
     "--mine-clips labels the clips by the sim's own success"),
])
def test_bad_sim_arguments_get_one_line_and_exit_2(setup, tmp_path, capsys, argv, message):
    assert main(["--policy", str(setup.policy), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing written on a usage error"


def test_prophrl_train_in_the_sim_rewards_the_sim_success(setup, tmp_path, capsys):
    """An untrained policy never lifts the cube in 4 steps: every reward is the sim's 0, so no group carries a
    learning signal (a judge on random frames would still reward it)."""
    out = tmp_path / "run"
    config = setup.rl_config("sim_rl.json", group_size=2, states_per_update=1, chunks_per_rollout=1,
                             shared_world_model_noise=True)
    assert main(["--policy", str(setup.policy), "--sim", "panda_sim/lift", "--sim-reward", "--sim-states", "2",
                 "--out", str(out), "--updates", "1", "--config", str(config), "--threads", "1", "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert row["rollout/success_rate"] == 0.0 and row["rollout/reward_mean"] == 0.0
    assert row["rollout/groups_without_signal"] == 1.0
    assert row["rollout/true_success_rate"] == 0.0 and row["rollout/false_success_rate"] == 0.0
    printed = capsys.readouterr().out
    assert "true success" in printed, "the summary table shows the sim's own success"
    assert "against the sim's own" not in printed, "the sim's own reward has no precision to report"
    state = json.loads((out / "checkpoints" / "update_000001" / "trainer_state.json").read_text())
    assert state["run"]["world_model"] == "sim:panda_sim/lift" and state["run"]["reward"] == "sim:success"


def test_prophrl_train_in_the_sim_mines_the_judged_clips_for_the_judge(setup, tmp_path, capsys):
    """--mine-clips keeps, per update, the clip each rollout was judged on with the sim's own success: what the judge
    rewarded is in the file, every frame of the clip was rendered, and a resumed run adds to the same directory.
    The summary pools the judge's successes against the sim's over the run's updates."""
    import torch

    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_mined_clips import load_mined_clips
    from prophrl_worldmodel.modeling_judge import RewardJudge

    torch.manual_seed(0)
    judge = RewardJudge(get_judge_config("tiny", image_size=32, num_frames=4)).save_pretrained(tmp_path / "judge")
    out = tmp_path / "run"
    config = setup.rl_config("sim_mine.json", group_size=2, states_per_update=1, chunks_per_rollout=2,
                             shared_world_model_noise=True)
    argv = ["--policy", str(setup.policy), "--sim", "panda_sim/lift", "--judge", str(judge), "--sim-states", "2",
            "--out", str(out), "--config", str(config), "--threads", "1", "--no-progress", "--mine-clips"]
    assert main([*argv, "--updates", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--updates", "2", "--resume"]) == 0, "the run directory holds its mined clips"
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if line.startswith("1-2 ")]
    judged = np.mean([row["rollout/success_rate"] for row in rows])
    true = np.mean([row["rollout/true_success_rate"] for row in rows])
    assert "against the sim's own on RL's rollouts" in printed
    assert line.split()[1:3] == [f"{judged:.2f}", f"{true:.2f}"], "both updates, resumed one included, pooled"
    files = sorted(p.name for p in (out / "mined_clips").iterdir())
    assert files == ["update_000001.safetensors", "update_000002.safetensors"]
    for name, row in zip(files, rows):
        clips = load_mined_clips([out / "mined_clips"])
        mined = [i for i, group in enumerate(clips.groups) if f"/{name[:-12]}/" in group]
        assert len(mined) == 2, "one clip per rollout"
        horizon = 4
        lengths = [len(clips.clips[i]) for i in mined]
        assert np.mean(lengths) == pytest.approx(row["rollout/length_chunks"] * horizon), \
            "every frame of every judged chunk, up to where the rollout ended"
        assert np.mean(clips.labels[mined]) == pytest.approx(row["rollout/true_success_rate"])
    from safetensors.numpy import load_file

    mined = load_file(str(out / "mined_clips" / files[0]))
    rewards = mined["rewards"]
    assert float(rewards.mean()) == pytest.approx(rows[0]["rollout/reward_mean"], abs=1e-6)
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)  # one group of 2
    positive = np.clip(advantages, 0, None)
    assert rows[0]["rollout/positive_advantage"] == pytest.approx(positive.mean(), rel=1e-4)
    assert rows[0]["rollout/positive_advantage_on_true_success"] == pytest.approx(
        (positive * mined["labels"]).mean(), abs=1e-6)


def test_groups_beyond_the_sims_in_memory_are_rolled_out_a_few_at_a_time(setup):
    """With room for 2 sims, 2 groups of 2 rollouts run one after the other on 2 sims. The first group is what 4 sims
    at once give it (the policy's noise is drawn in another order for the second)."""
    import torch

    from prophrl_nn.flow_matching import SamplerConfig
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.imagined_rollouts import ImaginationSettings, imagine

    policy = VLAPolicy.from_pretrained(setup.policy)
    starts = sim_starts("panda_sim", "lift", 2)
    settings = ImaginationSettings(chunks=2, sampler=SamplerConfig(3, 0.7), early_termination=False, keep_clips=True)
    results = {}
    for room in (2, 4):
        backend = SimRollouts("panda_sim", "lift", policy.config.horizon, every_frame=False, max_rollouts=room)
        try:
            results[room] = imagine(policy, backend, SimSuccessScorer(), starts, [0, 1], 2, "ode",
                                    torch.Generator().manual_seed(0), settings)
            assert len(backend._all) == room
        finally:
            backend.shutdown()
    few, all_at_once = results[2], results[4]
    assert few.images.shape[:2] == (4, 2) and few.mask.shape == (2, 2, 2) and few.rewards.shape == (2, 2)
    torch.testing.assert_close(few.states[:2], all_at_once.states[:2])
    torch.testing.assert_close(few.images[:2], all_at_once.images[:2])
    torch.testing.assert_close(few.states[:, 0], all_at_once.states[:, 0])
    np.testing.assert_allclose(few.states[2:, 0, :7].numpy(), np.repeat(starts[1].ee_pose[None], 2, 0), atol=1e-6)
    assert few.instructions == all_at_once.instructions == [starts[0].instruction] * 2 + [starts[1].instruction] * 2
    assert few.true_success.shape == (2, 2)
    np.testing.assert_array_equal(few.true_success, few.success)
    assert len(few.clips) == 4 and all(clip.shape[0] == 2 for clip in few.clips), "each rollout's 2 rendered frames"
    for clip, same in zip(few.clips[:2], all_at_once.clips[:2]):  # the first chunk's frame (the noise then differs)
        np.testing.assert_array_equal(clip[0], same[0])


class _FooledJudge:
    """A judge that calls every clip a success: what RL's exploitation drives a real judge towards."""

    def score(self, frames, instructions, states):
        return np.ones(len(frames), np.float32), np.ones(len(frames), bool)


def test_a_judge_s_decisions_are_checked_against_the_sim_s_own_success(setup):
    """In the sim, each rollout also carries its true success where it ended: a judge that calls every clip of an
    untrained policy successful has false_success_rate 1 (precision 0), and the imagined metrics in a world model,
    which cannot know the truth, carry none."""
    import torch

    from prophrl_nn.flow_matching import SamplerConfig
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.imagined_rollouts import ImaginationSettings, imagine, truth_metrics

    policy = VLAPolicy.from_pretrained(setup.policy)
    starts = sim_starts("panda_sim", "lift", 1)
    settings = ImaginationSettings(chunks=2, sampler=SamplerConfig(3, 0.7))
    backend = SimRollouts("panda_sim", "lift", policy.config.horizon)
    try:
        imagined = imagine(policy, backend, _FooledJudge(), starts, [0], 3, "sde", torch.Generator().manual_seed(0),
                           settings)
    finally:
        backend.shutdown()
    assert imagined.success.all() and (imagined.length == 1).all(), "the first judged success ends each rollout"
    assert not imagined.true_success.any()
    assert truth_metrics(imagined, "rollout") == {"rollout/true_success_rate": 0.0, "rollout/false_success_rate": 1.0}
    imagined.true_success = np.array([[True, False, False]])
    paid = truth_metrics(imagined, "rollout", np.array([[1.0, 0.5, -1.5]]))
    assert paid["rollout/positive_advantage"] == pytest.approx(1.5 / 3), "positive advantage per rollout"
    assert paid["rollout/positive_advantage_on_true_success"] == pytest.approx(1.0 / 3), "a third of it on failure"
    imagined.true_success = None
    assert truth_metrics(imagined, "rollout") == {}


def test_concatenated_rollouts_pad_the_shorter_part_with_masked_chunks():
    import torch

    from prophrl_trainer.imagined_rollouts import Imagined, concatenate

    def part(groups, chunks, value):
        ng = groups * 2
        return Imagined(torch.full((ng, chunks, 3, 4, 4), value), torch.full((ng, chunks, 8), value), None, None, None,
                        ["i"] * ng, np.ones((groups, 2, chunks), np.float32), np.full((groups, 2), value),
                        np.ones((groups, 2), bool), np.full((groups, 2), chunks), {"policy_s": 1.0})

    both = concatenate([part(1, 3, 1.0), part(2, 1, 2.0)])
    assert both.images.shape == (6, 3, 3, 4, 4) and both.latents is None and len(both.instructions) == 6
    assert both.mask.shape == (3, 2, 3)
    np.testing.assert_array_equal(both.mask[0], 1)
    np.testing.assert_array_equal(both.mask[1:, :, 0], 1)
    np.testing.assert_array_equal(both.mask[1:, :, 1:], 0)
    assert float(both.states[2:, 1:].abs().sum()) == 0 and float(both.states[2:, 0].min()) == 2.0
    np.testing.assert_array_equal(both.rewards[:, 0], [1.0, 2.0, 2.0])
    assert both.timings["policy_s"] == 2.0
