"""Reading weights: a corrupt file is one ConfigError; a Ctrl-C during the read stays a Ctrl-C."""

import os
import signal

import pytest
import safetensors.torch
import torch

from prophrl_common.config_io import ConfigError
from prophrl_common.weights import load_safetensors


def test_weights_round_trip_and_a_corrupt_file_is_a_config_error(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.arange(3.0)}, str(path))
    assert torch.equal(load_safetensors(path)["w"], torch.arange(3.0))
    path.write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="cannot read weights"):
        load_safetensors(path)


def test_a_ctrl_c_during_the_read_is_raised_as_keyboard_interrupt(tmp_path, monkeypatch):
    """Regression: a SIGINT arriving inside the C code of the read surfaced as "could not determine the shape
    of object type 'torch.storage.UntypedStorage'", reported as a corrupt checkpoint (exit 2, `prophrl demo`
    interrupted while its judge stage loaded Prophet)."""
    def interrupted_read(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    monkeypatch.setattr(safetensors.torch, "load_file", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        load_safetensors(tmp_path / "model.safetensors")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
