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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        torch_device("cuda")
