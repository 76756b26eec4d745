"""ScriptedExpert: chunk format and limits, imperfection knobs, and task success in the sim loop."""

import numpy as np
import pytest

from prophrl_sim.arm_sim import ArmSim, Pose
from prophrl_sim.benchmark import run_episode
from prophrl_sim.expert import MAX_ROTATION_STEP_RAD, MAX_STEP_M, MISTAKES, ScriptedExpert

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # x, y, z, w: 180 deg about x, the TCP pointing down
EE = Pose(np.array([0.45, 0.0, 0.10]), DOWN)
CUBE = {"cube": Pose(np.array([0.55, 0.05, -0.09]), np.array([0.0, 0.0, 0.0, 1.0]))}


def test_chunk_format_and_limits():
    expert = ScriptedExpert("lift", 0.05, horizon=16)
    chunk = expert.plan(EE, CUBE, 0.0)
    assert chunk.shape == (16, 7) and chunk.dtype == np.float32
    assert np.all(np.linalg.norm(chunk[:, :3], axis=1) <= MAX_STEP_M + 1e-6)
    assert np.all(np.linalg.norm(chunk[:, 3:6], axis=1) <= MAX_ROTATION_STEP_RAD + 1e-6)
    assert set(np.unique(chunk[:, 6])) <= {0.0, 1.0}
    # Toward the cube (+x, +y) while turning the fingers to its faces.
    assert chunk[0, 0] > 0 and chunk[0, 1] > 0
    np.testing.assert_array_equal(chunk, ScriptedExpert("lift", 0.05, horizon=16).plan(EE, CUBE, 0.0))


def test_noise_and_skill_make_imperfect_demonstrations():
    clean = ScriptedExpert("lift", 0.05).plan(EE, CUBE, 0.0)
    noisy = ScriptedExpert("lift", 0.05, noise_std=0.002, seed=1).plan(EE, CUBE, 0.0)
    assert 0.0005 < np.std(noisy[:, :6] - clean[:, :6]) < 0.004
    np.testing.assert_array_equal(noisy[:, 6], clean[:, 6])
    assert ScriptedExpert("lift", 0.05, skill=1.0).mistake is None
    mistakes = {ScriptedExpert("lift", 0.05, skill=0.0, seed=seed).mistake for seed in range(30)}
    assert mistakes == set(MISTAKES)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="no scripted expert"):
        ScriptedExpert("juggle", 0.05)
    with pytest.raises(ValueError, match="skill"):
        ScriptedExpert("lift", 0.05, skill=1.5)
    with pytest.raises(ValueError, match="horizon"):
        ScriptedExpert("lift", 0.05, horizon=0)


@pytest.mark.slow
@pytest.mark.parametrize("robot", ["panda_sim", "ur5e_sim"])
def test_expert_lifts_the_cube(robot):
    with ArmSim(robot, "lift") as sim:
        expert = ScriptedExpert("lift", sim.control_period_s)
        results = [run_episode(sim, expert, seed, max_steps=200) for seed in range(10)]
    successes = sum(succeeded for succeeded, _ in results)
    assert successes >= 8, results


@pytest.mark.parametrize("task", ["stack", "door"])
def test_expert_solves_the_other_tasks(task):
    with ArmSim("panda_sim", task) as sim:
        assert run_episode(sim, ScriptedExpert(task, sim.control_period_s), seed=0, max_steps=300)[0]


def test_a_failed_grasp_is_noticed_and_retried():
    with ArmSim("panda_sim", "lift") as sim:
        expert = ScriptedExpert("lift", sim.control_period_s, skill=0.0, seed=3)
        observation = sim.reset(3)
        expert.reset(3)
        assert expert.mistake in ("grasp_offset", "early_close")
        for _ in range(120):
            chunk = expert.plan(observation.ee_pose, observation.object_poses, observation.time_s)
            sim.step_ee_delta(chunk[0, :3], chunk[0, 3:6], float(chunk[0, 6]))
            observation = sim.observe()
            if expert.attempts > 1:
                break
        assert expert.attempts == 2 and expert.stage.startswith("pre_grasp")
