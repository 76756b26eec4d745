import numpy as np
import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration
from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts, step_together
from prophrl_worldmodel.modeling_prophet import Prophet


@pytest.fixture(scope="module")
def prophet():
    torch.manual_seed(0)
    return Prophet(get_prophet_config("tiny", image_size=32, num_layers=1, ffn_dim=64)).eval()


def _start(with_pose=True, with_camera=True, frames=3):
    context = np.random.default_rng(0).integers(0, 255, (frames, 40, 40, 3), dtype=np.uint8)
    camera = CameraCalibration.from_camera_info([40, 0, 20, 0, 40, 20, 0, 0, 1],
                                                np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.5], [0, 0, 0, 1]]),
                                                40, 40) if with_camera else None
    pose = np.array([0.1, 0.0, 0.2, 0, 0, 0, 1.0]) if with_pose else None
    return ImaginationStart(context, "lift the cube", pose, 0.0, camera)


def _chunks(g, horizon, dx):
    chunks = np.zeros((g, horizon, 7), np.float32)
    chunks[:, :, 0] = dx
    chunks[:, :, 6] = 1.0
    return chunks


def test_rollouts_integrate_each_chunk_and_keep_every_clip(prophet):
    config = prophet.config
    rollouts = ImaginedRollouts(prophet, _start(), num_rollouts=2, num_steps=1, seed=0)
    assert rollouts.current_frames.shape == (2, 32, 32, 3) and rollouts.frames.shape[1] == 0
    clip = rollouts.step(_chunks(2, config.action_horizon, np.array([[0.01], [-0.01]])))
    assert clip.shape == (2, config.frames_per_clip, 32, 32, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(rollouts.current_frames, clip[:, -1])
    poses = rollouts.ee_poses
    np.testing.assert_allclose(poses[:, 0], [0.1 + 0.01 * config.action_horizon, 0.1 - 0.01 * config.action_horizon],
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(poses[:, 3:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(rollouts.grippers, [1.0, 1.0])
    rollouts.step(_chunks(2, config.action_horizon, 0.0))
    assert rollouts.frames.shape[1] == 2 * config.frames_per_clip and rollouts.chunks_done == 2


def test_imagination_keeps_no_autograd_graph_from_chunk_to_chunk(prophet):
    """The world model's parameters require grad (a trained Prophet can be adapted), but imagining builds no graph:
    one held in the history buffer would chain every chunk's and grow memory with the rollout (measured: about
    90 MB per rollout over 6 chunks of the demo's Prophet)."""
    assert any(p.requires_grad for p in prophet.parameters())
    rollouts = ImaginedRollouts(prophet, _start(), num_rollouts=2, num_steps=1, seed=0)
    for _ in range(2):
        rollouts.step(_chunks(2, prophet.config.action_horizon, 0.01))
    assert rollouts._history.grad_fn is None and rollouts._start.grad_fn is None
    clip = prophet.generate(_start().context_frames[-1:], None, _chunks(1, prophet.config.action_horizon, 0.0),
                            num_steps=1)
    assert not clip.requires_grad


def test_live_rollouts_keep_no_frames_but_still_advance(prophet):
    horizon = prophet.config.action_horizon
    rollouts = ImaginedRollouts(prophet, _start(), 1, num_steps=1, keep_frames=False)
    clip = rollouts.step(_chunks(1, horizon, 0.01))
    assert rollouts.frames.shape[1] == 0 and rollouts.chunks_done == 1
    np.testing.assert_array_equal(rollouts.current_frames, clip[:, -1])


def test_stepping_equals_the_models_open_loop_rollout(prophet):
    """Chunk by chunk gives what Prophet.rollout gives for the same chunks and seed (no pose: no action frames)."""
    config = prophet.config
    start = _start(with_pose=False, with_camera=False)
    chunks = np.stack([_chunks(3, config.action_horizon, 0.01), _chunks(3, config.action_horizon, -0.02)], axis=1)
    rollouts = ImaginedRollouts(prophet, start, num_rollouts=3, num_steps=2, seed=7)
    for i in range(2):
        rollouts.step(chunks[:, i])
    generator = torch.Generator().manual_seed(7)
    zeros = np.zeros((3, 2, config.frames_per_clip, 32, 32, 3), np.uint8) if config.use_action_frames else None
    reference = prophet.rollout(start.context_frames[-1][None], chunks, start.context_frames[:-1][None], 2, generator,
                                action_frames=zeros, calibrated=np.zeros(3) if zeros is not None else None)
    np.testing.assert_allclose(rollouts.frames.astype(np.float32), reference.round().clamp(0, 255).numpy(), atol=1.0)
    assert rollouts.ee_poses is None


def test_same_seed_same_imagination_different_seed_differs(prophet):
    horizon = prophet.config.action_horizon
    clips = [ImaginedRollouts(prophet, _start(), 1, num_steps=2, seed=s).step(_chunks(1, horizon, 0.0)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(clips[0], clips[1])
    assert np.abs(clips[0].astype(int) - clips[2].astype(int)).mean() > 1.0


@pytest.mark.parametrize("bad, message", [
    (lambda h: np.zeros((2, h, 7)), r"chunks must be \(1, "),
    (lambda h: np.zeros((1, h + 1, 7)), r"chunks must be"),
    (lambda h: np.zeros((1, h, 5)), r"7 per arm"),
    (lambda h: np.full((1, h, 7), np.nan), "NaN"),
])
def test_bad_chunks_are_rejected_and_nothing_advances(prophet, bad, message):
    rollouts = ImaginedRollouts(prophet, _start(), 1, num_steps=1)
    with pytest.raises(ConfigError, match=message):
        rollouts.step(bad(prophet.config.action_horizon))
    assert rollouts.chunks_done == 0 and rollouts.frames.shape[1] == 0


def test_shared_noise_makes_equal_actions_imagine_equal_futures(prophet):
    """Common random numbers for RL groups: with shared noise the rollouts differ only where actions differ."""
    horizon = prophet.config.action_horizon
    same = _chunks(3, horizon, 0.01)
    for _ in range(2):   # every chunk, not only the first
        shared = ImaginedRollouts(prophet, _start(), 3, num_steps=2, seed=5, shared_noise=True)
        clips = [shared.step(same) for _ in range(2)]
        for clip in clips:
            assert (clip[1:] == clip[:1]).all()
    independent = ImaginedRollouts(prophet, _start(), 3, num_steps=2, seed=5).step(same)
    assert (independent[1] != independent[0]).any()
    differing = ImaginedRollouts(prophet, _start(), 3, num_steps=2, seed=5, shared_noise=True).step(
        _chunks(3, horizon, np.array([[0.01], [-0.02], [0.03]])))
    assert (differing[1] != differing[0]).any() and (differing[2] != differing[0]).any()


def test_groups_stepped_together_imagine_what_each_imagines_alone(prophet):
    """One batched world-model call for several groups: each group keeps its own noise stream, poses and history,
    so its clips, poses and frames are those of stepping it alone (up to the batch's float rounding)."""
    horizon = prophet.config.action_horizon

    def groups():
        return [ImaginedRollouts(prophet, _start(), 2, num_steps=2, seed=3),
                ImaginedRollouts(prophet, _start(with_camera=False), 3, num_steps=2, seed=4, shared_noise=True),
                ImaginedRollouts(prophet, _start(frames=1), 1, num_steps=2, seed=5)]  # a shorter history

    chunks = [_chunks(2, horizon, np.array([[0.01], [-0.01]])), _chunks(3, horizon, 0.02), _chunks(1, horizon, -0.02)]
    alone, together = groups(), groups()
    batch_sizes = []
    generate = prophet.generate
    for _ in range(2):
        expected = [group.step(chunk) for group, chunk in zip(alone, chunks)]
        prophet.generate = lambda start, *args, **kwargs: batch_sizes.append(len(start)) or generate(start, *args,
                                                                                                     **kwargs)
        try:
            got = step_together(together, chunks)
        finally:
            del prophet.generate
        for a, b in zip(expected, got):
            assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert batch_sizes == [5, 1, 5, 1], "one call for the two groups with 2 history frames, one for the other"
    for a, b in zip(alone, together):
        assert b.chunks_done == 2 and np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2
        if a.ee_poses is not None:
            np.testing.assert_allclose(a.ee_poses, b.ee_poses, atol=1e-6)
    other = ImaginedRollouts(Prophet(prophet.config).eval(), _start(), 1, num_steps=2)
    with pytest.raises(ValueError, match="one world model"):
        step_together([alone[0], other], [chunks[0], chunks[2]])
    # a bad chunk in one group: no group advances, and no group's noise stream moves
    first_state = together[0].generator.get_state()
    with pytest.raises(ConfigError, match="NaN"):
        step_together(together[:2], [chunks[0], np.full_like(chunks[1], np.nan)])
    assert [g.chunks_done for g in together] == [2, 2, 2] and torch.equal(together[0].generator.get_state(),
                                                                          first_state)


def test_bad_starts_are_rejected():
    with pytest.raises(ConfigError, match="context_frames"):
        ImaginationStart(np.zeros((2, 8, 8)))
    with pytest.raises(ConfigError, match="ee_pose"):
        ImaginationStart(np.zeros((8, 8, 3), np.uint8), ee_pose=np.zeros(7))


def test_a_reanchored_rollout_imagines_what_a_rollout_started_from_the_observations_imagines():
    """reanchor puts the observed clip where the imagined one was: the next chunk equals that of a rollout whose
    context frames are the start's followed by the observed clip, from the observed pose. (A Prophet whose flow
    starts at the start frame, so its clips depend visibly on that frame even untrained.)"""
    torch.manual_seed(0)
    prophet = Prophet(get_prophet_config("tiny", image_size=32, num_layers=1, ffn_dim=64, predict_residual=True,
                                         flow_source="start_frame")).eval()
    config, horizon = prophet.config, prophet.config.action_horizon
    start = _start()
    observed = np.random.default_rng(1).integers(0, 255, (1, config.frames_per_clip, 40, 40, 3), dtype=np.uint8)
    pose = np.array([0.2, 0.1, 0.3, 0, 0, 0, 1.0])
    rollouts = ImaginedRollouts(prophet, start, num_rollouts=1, num_steps=1, seed=0)
    imagined = rollouts.step(_chunks(1, horizon, 0.01))
    rollouts.reanchor(observed, pose[None], np.array([1.0]))
    np.testing.assert_allclose(rollouts.ee_poses[0], pose, atol=1e-6)
    np.testing.assert_array_equal(rollouts.grippers, [1.0])
    np.testing.assert_array_equal(rollouts.frames, imagined)  # what was imagined stays on record
    fresh = ImaginedRollouts(prophet, ImaginationStart(np.concatenate([start.context_frames, observed[0]]),
                                                       start.instruction, pose, 1.0, start.calibration),
                             1, num_steps=1, seed=5)
    # the model's whole input: the history buffer and the start frame
    torch.testing.assert_close(rollouts._history, fresh._history)
    torch.testing.assert_close(rollouts._start, fresh._start)
    rollouts.generator.manual_seed(5)
    following = rollouts.step(_chunks(1, horizon, -0.01))
    np.testing.assert_allclose(following.astype(np.float32), fresh.step(_chunks(1, horizon, -0.01)), atol=1.0)
    not_reanchored = ImaginedRollouts(prophet, start, 1, num_steps=1, seed=0)
    not_reanchored.step(_chunks(1, horizon, 0.01))
    not_reanchored.generator.manual_seed(5)
    assert np.abs(following.astype(int) - not_reanchored.step(_chunks(1, horizon, -0.01)).astype(int)).mean() > 1.0


def test_reanchor_refuses_what_it_cannot_use(prophet):
    rollouts = ImaginedRollouts(prophet, _start(), num_rollouts=2, num_steps=1, seed=0)
    clip = np.zeros((2, prophet.config.frames_per_clip, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="step at least once"):
        rollouts.reanchor(clip)
    rollouts.step(_chunks(2, prophet.config.action_horizon, 0.0))
    with pytest.raises(ConfigError, match="observed_clip must be"):
        rollouts.reanchor(clip[:1])
    with pytest.raises(ConfigError, match="all finite"):
        rollouts.reanchor(clip, np.full((2, 7), np.nan))
