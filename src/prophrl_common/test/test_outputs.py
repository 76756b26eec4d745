"""Output directories: checked before any work, never replacing what a command did not write."""

import pytest

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import OutputKind, check_output_dir, check_run_dir, check_writable_dir

KIND = OutputKind("test checkpoint", frozenset({"model.bin", "config.json", "tensorboard"}))


def test_new_and_empty_directories_are_accepted(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", KIND) == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", KIND)
    assert not (tmp_path / "a").exists(), "checking creates nothing"


def test_an_existing_output_needs_the_flag_and_must_be_of_the_same_kind(tmp_path):
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "model.bin").write_text("weights")
    (previous / "tensorboard").mkdir()
    with pytest.raises(ConfigError, match="already exists .pass --overwrite"):
        check_output_dir(previous, KIND)
    check_output_dir(previous, KIND, overwrite=True)
    (previous / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"is not a previous test checkpoint \(it holds notes.txt\)"):
        check_output_dir(previous, KIND, overwrite=True)


def test_the_output_is_never_an_input_nor_holds_one(tmp_path):
    data = tmp_path / "data"
    (data / "bags").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is the input"):
        check_output_dir(data, KIND, overwrite=True, inputs=[data])
    with pytest.raises(ConfigError, match="holds the input"):
        check_output_dir(data, KIND, overwrite=True, inputs=[data / "bags"])
    check_output_dir(data / "bags" / "out", KIND, inputs=[data / "bags"])  # inside an input is fine


def test_paths_under_a_file_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for check in (lambda p: check_output_dir(p, KIND), lambda p: check_writable_dir(p), lambda p: check_run_dir(p, KIND)):
        with pytest.raises(ConfigError, match="is not a directory"):
            check(tmp_path / "file" / "out")
        with pytest.raises(ConfigError, match="exists and is not a directory"):
            check(tmp_path / "file")


def test_a_run_directory_may_be_reused_but_not_a_foreign_one(tmp_path):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    check_run_dir(run, KIND)
    (run / "dataset.npz").write_text("x")
    with pytest.raises(ConfigError, match="not a previous test checkpoint"):
        check_run_dir(run, KIND)


def test_replacing_a_directory_keeps_what_the_new_one_does_not_write(tmp_path):
    """Regression: a checkpoint saved over its own directory deleted the TensorBoard log written into it."""
    out = tmp_path / "out"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events").write_text("log")
    (out / "model.bin").write_text("old")
    (out / "adapter.bin").write_text("stale")
    with atomic_directory(out, drop=("adapter.bin",)) as tmp:
        (tmp / "model.bin").write_text("new")
    assert (out / "model.bin").read_text() == "new"
    assert (out / "tensorboard" / "events").read_text() == "log"
    assert not (out / "adapter.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
