"""The one check of a user-named torch device."""

import pytest
import torch

from prophrl_common.config_io import ConfigError
from prophrl_common.devices import torch_device


def test_cpu_is_a_device_and_bad_names_are_one_clear_error():
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device 'gpu0'"):
        torch_device("gpu0")
    with pytest.raises(ConfigError, match="only cpu and cuda"):
        torch_device("meta")
    # a GPU index no machine here has: CUDA missing or too few devices, either way one error naming it
    with pytest.raises(ConfigError, match="parameter device cuda:99"):
        torch_device("cuda:99", "parameter device")


def test_cuda_is_refused_exactly_where_it_is_missing():
    if torch.cuda.is_available():
        assert torch_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            torch_device("cuda")
