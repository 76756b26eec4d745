import json

import numpy as np
import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer.distill import DistillConfig, distill_policy
from prophrl_trainer.sft import DemoData, concatenate_demonstrations


def _data(episodes: int = 4, frames: int = 12, seed: int = 0) -> DemoData:
    rng = np.random.default_rng(seed)
    n = episodes * frames
    return DemoData(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.normal(size=(n, 8)).astype(np.float32),
                    np.zeros((n, 4, 7), np.float32), ["lift the cube"] * n, np.repeat(np.arange(episodes), frames),
                    robot="panda_sim", control_period_s=0.05)


@pytest.fixture
def teacher_dir(tmp_path):
    """A teacher whose ODE paths curve: random weights with a non-zero output layer, so that few Euler steps land
    far from many."""
    torch.manual_seed(0)
    teacher = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, image_size=32, horizon=4))
    with torch.no_grad():
        teacher.action_out[1].weight.normal_(0.0, 0.6)
        teacher.action_in.weight.mul_(3.0)
    return teacher.save_pretrained(tmp_path / "teacher")


def test_the_distilled_student_gives_the_teachers_chunks_in_few_steps(teacher_dir, tmp_path):
    data = _data()
    before = {p.name: p.read_bytes() for p in teacher_dir.iterdir()}
    cfg = DistillConfig(num_steps=2, steps=200, batch_size=32, learning_rate=2e-3, warmup_steps=10, validation_every=4)
    path, summary = distill_policy(teacher_dir, data, cfg, tmp_path / "student", show_progress=False)

    # The teacher at 2 steps is far from itself at 10; the student at 2 steps is much closer, on episodes it never saw.
    assert summary["validation"] == "held-out episodes" and summary["validation_observations"] == 12
    assert summary["teacher_at_student_steps_rms"] > 0.05
    assert summary["student_rms"] < 0.4 * summary["teacher_at_student_steps_rms"]  # measured 0.21
    assert json.loads((path / "distill.json").read_text())["student_steps"] == 2
    # Its checkpoint samples with 2 steps by default; the teacher is untouched.
    student = VLAPolicy.from_pretrained(path)
    assert student.config.num_inference_steps == 2
    obs = Observation.from_frames(data.frames[:3], data.instructions[:3], data.states[:3], student.config)
    assert student.predict_action_chunk(obs).latents.shape[1] == 3
    assert {p.name: p.read_bytes() for p in teacher_dir.iterdir()} == before


def test_a_given_start_noise_is_the_path_a_generator_would_have_drawn(teacher_dir):
    teacher = VLAPolicy.from_pretrained(teacher_dir)
    data = _data(episodes=1, frames=3)
    obs = Observation.from_frames(data.frames, data.instructions, data.states, teacher.config)
    drawn = teacher.predict_action_chunk(obs, generator=torch.Generator().manual_seed(3))
    given = teacher.predict_action_chunk(obs, noise=drawn.latents[:, 0])
    torch.testing.assert_close(given.actions, drawn.actions, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise must be"):
        teacher.predict_action_chunk(obs, noise=drawn.latents[:1, 0])


def test_distillation_refuses_what_would_save_nothing_or_overwrite_the_teacher(teacher_dir, tmp_path):
    data = _data(episodes=2, frames=4)
    for steps in (10, 4):  # not fewer than the teacher's 10, or not a divisor of them
        with pytest.raises(ConfigError, match="one of \\[1, 2, 5\\], got " + str(steps)):
            distill_policy(teacher_dir, data, DistillConfig(num_steps=steps, steps=1), tmp_path / "student",
                           show_progress=False)
    assert not (tmp_path / "student").exists()
    with pytest.raises(ConfigError):
        distill_policy(teacher_dir, data, DistillConfig(num_steps=2, steps=1), teacher_dir, overwrite=True,
                       show_progress=False)
    assert VLAPolicy.from_pretrained(teacher_dir).config.num_inference_steps == 10


def test_datasets_of_one_robot_concatenate_with_distinct_episodes_and_others_are_refused():
    merged = concatenate_demonstrations([_data(episodes=2, frames=3), _data(episodes=3, frames=2, seed=1)])
    assert len(merged) == 12 and sorted(set(merged.episode_index.tolist())) == [0, 1, 2, 3, 4]
    other = _data(episodes=1, frames=2)
    other.robot = "ur5e_sim"
    with pytest.raises(ConfigError, match="different robots"):
        concatenate_demonstrations([_data(), other])
