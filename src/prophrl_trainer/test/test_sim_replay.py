"""Imagined rollouts replayed in the physics sim (`prophrl train --world-model P --replay-in-sim ROBOT/TASK`): the
policy sees Prophet's frames, a real robosuite arm executes the same chunks, and the sim's task check is each
rollout's truth."""

import json

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_trainer.imagined_rollouts import ground_truth
from prophrl_trainer.initial_states import InitialStateSampler
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.rollouts import InProcessImagination
from prophrl_trainer.sim_backend import SimRollouts, sim_starts
from prophrl_trainer.sim_replay import ReplayedInSim
from prophrl_trainer.sim_rollout import ExpertController
from prophrl_trainer.train_cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_smoke_setup(tmp_path_factory.mktemp("sim_replay_setup"))


def _prophet(setup):
    from prophrl_worldmodel.modeling_prophet import Prophet

    return Prophet.from_pretrained(setup.prophet).eval().requires_grad_(False)


def test_replayed_rollouts_see_the_world_model_and_carry_the_sim_s_success_of_their_actions(setup):
    """The scripted expert's chunks lift the cube in the replay of rollout 0, zeros do nothing in rollout 1: the
    groups' success is the sim's (True, False) while every frame the policy gets is the untrained Prophet's, and the
    replaying arm is where a plain sim rollout of the same chunks is."""
    prophet = _prophet(setup)
    horizon = prophet.config.action_horizon
    starts = sim_starts("panda_sim", "lift", 1)
    backend = ReplayedInSim(InProcessImagination(prophet), SimRollouts("panda_sim", "lift", horizon, image_size=32,
                                                                        every_frame=False))
    plain = SimRollouts("panda_sim", "lift", horizon, every_frame=False)
    try:
        (group,) = backend.open(starts, 2, [0])
        (same,) = plain.open(starts, 2, [0])
        assert not group.success.any()
        np.testing.assert_array_equal(group.current_frames[0], starts[0].context_frames[-1]), "the start is the sim's"
        replay = backend.replay_of(group)
        expert = ExpertController("lift", replay.handle[0].sim.control_period_s, horizon=horizon)
        expert.reset(starts[0].seed)
        for _ in range(80):
            arm = replay.handle[0]
            lift = expert.chunk(None, "", arm.observation, arm.gripper)
            chunks = [np.stack([lift, np.zeros_like(lift)])]
            backend.step([group], chunks)
            plain.step([same], chunks)
            if group.success[0]:
                break
        assert [ground_truth(group, j) for j in range(2)] == [True, False], \
            f"the expert should lift within 320 steps, zeros should not: {group.success}"
        np.testing.assert_array_equal(group.success, same.success)
        np.testing.assert_allclose(replay.state, same.state, atol=1e-6)
        size = prophet.config.image_size
        assert group.clips[0].shape == (2, prophet.config.frames_per_clip, size, size, 3), "Prophet's clips"
        assert not np.allclose(group.state[0, :3], same.state[0, :3], atol=1e-3), \
            "the policy's proprio is the world model's integrated pose, not the sim's"
        backend.close([group])
        assert not backend._replays and len(backend.sim._idle) == 2, "the replaying sims go back to the pool"
        (again,) = backend.open(starts, 2, [1])
        assert not again.success.any(), "a new group starts from the seed's reset, not from the lifted cube"
        backend.close([again])
    finally:
        backend.shutdown()
        plain.shutdown()


def test_a_replay_needs_sim_starts_and_the_world_model_s_horizon(setup):
    prophet = _prophet(setup)
    horizon = prophet.config.action_horizon
    with pytest.raises(ConfigError, match="executes 4 actions per clip"):
        ReplayedInSim(InProcessImagination(prophet), SimRollouts("panda_sim", "lift", horizon + 1))
    backend = ReplayedInSim(InProcessImagination(prophet), SimRollouts("panda_sim", "lift", horizon, image_size=32))
    recorded = InitialStateSampler(setup.data).fixed(1)
    try:
        with pytest.raises(ConfigError, match="start from sim seeds"):
            backend.open(recorded, 2, [0])
        assert not backend._replays
    finally:
        backend.shutdown()


def test_prophrl_train_in_imagination_replayed_in_the_sim_measures_the_judge_on_its_rollouts(setup, tmp_path, capsys):
    """A real tiny judge with threshold 0 calls every imagined clip of an untrained policy successful (what RL's
    exploitation drives a judge towards): the logged true success is the
    replay's 0, so precision on RL's imagined rollouts is 0 (false success 1), the summary says so, and the mined
    clips are Prophet's frames labelled by the sim."""
    import torch

    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_mined_clips import load_mined_clips
    from prophrl_worldmodel.modeling_judge import RewardJudge

    torch.manual_seed(0)
    RewardJudge(get_judge_config("tiny", image_size=32, num_frames=4)).with_threshold(0.0).save_pretrained(
        tmp_path / "judge")
    out = tmp_path / "run"
    config = setup.rl_config("replay.json", group_size=2, states_per_update=1, chunks_per_rollout=2, eval_every=1,
                             eval_states=1, eval_rollouts=1, shared_world_model_noise=True)
    assert main(["--policy", str(setup.policy), "--world-model", str(setup.prophet), "--replay-in-sim",
                 "panda_sim/lift", "--judge", str(tmp_path / "judge"), "--sim-states", "2", "--mine-clips",
                 "--out", str(out), "--updates", "1", "--config", str(config), "--threads", "1",
                 "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert row["rollout/success_rate"] == 1.0 and row["rollout/true_success_rate"] == 0.0
    assert row["rollout/false_success_rate"] == 1.0
    assert row["eval/success_rate"] == 1.0 and row["eval/true_success_rate"] == 0.0, "the evaluation is replayed too"
    printed = capsys.readouterr().out
    assert "against the sim's own on RL's imagined rollouts, their actions replayed in the sim" in printed
    (line,) = [line for line in printed.splitlines() if line.startswith("1-1 ")]
    assert line.split()[1:4] == ["1.00", "0.00", "1.00"], "judged, true, judged-but-failed"
    clips = load_mined_clips([out / "mined_clips"])
    assert len(clips.clips) == 2 and not clips.labels.any()
    assert [len(clip) for clip in clips.clips] == [2, 2], \
        "Prophet's first clip (2 frames; the sim would have rendered the chunk's 4 steps)"
    state = json.loads((out / "checkpoints" / "update_000001" / "trainer_state.json").read_text())
    assert state["run"]["world_model"] == str(setup.prophet) and state["run"]["replayed_in"] == "sim:panda_sim/lift"


@pytest.mark.parametrize("argv, message", [
    (["--sim", "panda_sim/lift", "--replay-in-sim", "panda_sim/lift", "--sim-reward"], "they are in the sim already"),
    (["--world-model", "W", "--replay-in-sim", "panda_sim/fly", "--sim-reward"], "--replay-in-sim wants ROBOT/TASK"),
    (["--world-model", "W", "--replay-in-sim", "panda_sim/lift", "--sim-reward", "--data", "D"], "drop --data"),
])
def test_bad_replay_arguments_get_one_line_and_exit_2(setup, tmp_path, capsys, argv, message):
    assert main(["--policy", str(setup.policy), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing written on a usage error"
