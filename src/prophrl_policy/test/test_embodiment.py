"""Checkpoints record what they were trained for (embodiment.json), and the check that refuses a mismatch."""

import json

import pytest
import torch

from prophrl_common.chunks import POLICY_STATE_NAMES
from prophrl_common.config_io import ConfigError
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.embodiment import EMBODIMENT_NAME, Embodiment, check_embodiment
from prophrl_policy.modeling_vla import VLAPolicy

FR3 = Embodiment("franka_fr3", "ee_delta_7d", POLICY_STATE_NAMES, 0.05)


def _policy(embodiment=None):
    torch.manual_seed(0)
    return VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=4),
                     embodiment=embodiment)


def test_embodiment_round_trips_with_the_weights_and_old_checkpoints_load_without_it(tmp_path):
    path = _policy(FR3).save_pretrained(tmp_path / "new")
    assert json.loads((path / EMBODIMENT_NAME).read_text())["robot"] == "franka_fr3"
    assert VLAPolicy.from_pretrained(path).embodiment == FR3
    old = _policy().save_pretrained(tmp_path / "old")
    assert not (old / EMBODIMENT_NAME).exists() and VLAPolicy.from_pretrained(old).embodiment is None


def test_a_bad_embodiment_is_one_clear_error(tmp_path):
    path = _policy(FR3).save_pretrained(tmp_path / "ckpt")
    (path / EMBODIMENT_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the checkpoint's embodiment"):
        VLAPolicy.from_pretrained(path)
    (path / EMBODIMENT_NAME).write_text(json.dumps({"robot": "franka_fr3"}))
    with pytest.raises(ConfigError, match="missing required key 'action_space'"):
        VLAPolicy.from_pretrained(path)
    with pytest.raises(ConfigError, match="state layout has 3 names, config needs state_dim 8"):
        _policy(Embodiment("franka_fr3", "ee_delta_7d", ("a", "b", "c"), 0.05))


def test_check_embodiment_names_every_mismatch_and_warns_for_old_checkpoints():
    assert check_embodiment(FR3, "franka_fr3", "ee_delta_7d", POLICY_STATE_NAMES) is None
    with pytest.raises(ConfigError) as err:
        check_embodiment(Embodiment("panda_sim", "joint_position", POLICY_STATE_NAMES[::-1], 0.05),
                         "franka_fr3", "ee_delta_7d", POLICY_STATE_NAMES)
    message = str(err.value)
    assert "trained for robot panda_sim, this node drives franka_fr3" in message
    assert "it emits joint_position actions, this node publishes ee_delta_7d" in message
    assert "its state layout is" in message
    warning = check_embodiment(None, "ur5e", "ee_delta_7d", POLICY_STATE_NAMES)
    assert "records no robot" in warning and "ur5e" in warning
