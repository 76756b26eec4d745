"""The clips RL's rollouts in the sim were judged on, as files the judge's training reads (judge_mined_clips)."""

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_frames
from prophrl_worldmodel.judge_mined_clips import (MINED_FRAME_SIZE, MINED_FRAMES, load_mined_clips, mined_clip_path,
                                                  save_mined_clips)


def _clip(length, size=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (length, size, size, 3), dtype=np.uint8)


def test_mined_clips_round_trip_reduced_with_their_first_and_last_frames(tmp_path):
    long, short, other = _clip(60, seed=1), _clip(5, seed=2), _clip(30, seed=3)
    path = save_mined_clips(mined_clip_path(tmp_path, 3), [long, short, other], [0, 1, 0], [0.9, 0.8, 0.1],
                            ["lift the red cube"] * 3, [0, 0, 1], update=3)
    assert path.name == "update_000003.safetensors" and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert path.stat().st_mode & 0o777 == 0o644, "readable by whoever trains the judge"
    assert mined_clip_path(tmp_path, 3, rank=2).name == "update_000003_rank2.safetensors"
    clips = load_mined_clips(tmp_path)
    assert [c.shape for c in clips.clips] == [(MINED_FRAMES, MINED_FRAME_SIZE, MINED_FRAME_SIZE, 3),
                                              (5, MINED_FRAME_SIZE, MINED_FRAME_SIZE, 3),
                                              (MINED_FRAMES, MINED_FRAME_SIZE, MINED_FRAME_SIZE, 3)]
    for original, loaded in zip((long, short, other), clips.clips):
        # the last frame shows where the rollout ended: the success evidence is kept, as the first frame
        np.testing.assert_array_equal(loaded[-1], resize_frames(original[-1:], MINED_FRAME_SIZE)[0])
        np.testing.assert_array_equal(loaded[0], resize_frames(original[:1], MINED_FRAME_SIZE)[0])
    np.testing.assert_array_equal(clips.labels, [0, 1, 0])
    assert clips.sources == ["rl"] * 3 and clips.instructions == ["lift the red cube"] * 3
    # rollouts of one start share a group, so the judge's validation split never separates them
    assert clips.groups[0] == clips.groups[1] != clips.groups[2]
    assert clips.counts() == {"clips": 3, "positives": 1, "negatives": 2, "episodes": 2}

    # a resumed run repeating the update replaces its file whole
    save_mined_clips(mined_clip_path(tmp_path, 3), [short], [1], [0.7], ["lift the red cube"], [0], update=3)
    assert len(load_mined_clips(tmp_path)) == 1 and len(list(tmp_path.iterdir())) == 1


def test_mined_clips_refuse_mismatched_or_non_finite_fields(tmp_path):
    with pytest.raises(ValueError, match="2 clips, 1 labels"):
        save_mined_clips(tmp_path / "u.safetensors", [_clip(3), _clip(3)], [0], [0.1, 0.2], ["a", "b"], [0, 0], 1)
    with pytest.raises(ValueError, match="NaN"):
        save_mined_clips(tmp_path / "u.safetensors", [_clip(3)], [0], [float("nan")], ["a"], [0], 1)
    assert not any(tmp_path.iterdir())


def test_unusable_mined_clip_directories_are_one_clear_error(tmp_path):
    from safetensors.numpy import save_file

    with pytest.raises(ConfigError, match="no mined rollout clips"):
        load_mined_clips(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no mined rollout clips"):
        load_mined_clips(tmp_path / "empty")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "update_000001.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConfigError, match="update_000001.safetensors: cannot read mined rollout clips"):
        load_mined_clips(corrupt)
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({"w": np.zeros(3, np.float32)}, str(weights / "update_000001.safetensors"))
    with pytest.raises(ConfigError, match="not a file of mined rollout clips"):
        load_mined_clips(weights)
    bad = tmp_path / "bad"
    save_mined_clips(mined_clip_path(bad, 1), [_clip(4)], [1], [0.5], ["a"], [0], 1)
    arrays = {"frames": np.zeros((1, 4, 8, 8, 3), np.uint8), "lengths": np.array([9]), "labels": np.array([1]),
              "rewards": np.array([0.5], np.float32), "starts": np.array([0])}
    from prophrl_worldmodel.judge_mined_clips import FORMAT

    save_file(arrays, str(mined_clip_path(bad, 2)), metadata={"format": FORMAT, "update": "2",
                                                                 "instructions": '["a"]'})
    with pytest.raises(ConfigError, match="update_000002.safetensors: malformed mined rollout clips"):
        load_mined_clips(bad)
