"""The shipped pretrained Prophets: they load with their registered config, beat copying the last frame on
episodes they never saw, adapt to a handful of new bags, and are found by name."""

import json

import numpy as np
import pytest

from prophrl_common.config_io import ConfigError
from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_worldmodel.cli import main
from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.modeling_prophet import WEIGHTS_NAME, Prophet
from prophrl_worldmodel.pretrained import PRETRAINED_PROPHETS, PretrainedProphet, resolve_prophet
from prophrl_worldmodel.training import evaluate_fidelity

SHIPPED = "sim_tiny_32px"


@pytest.mark.parametrize("name", sorted(PRETRAINED_PROPHETS))
def test_every_shipped_prophet_loads_with_its_registered_config_and_stays_small(name):
    entry = PRETRAINED_PROPHETS[name]
    path = resolve_prophet(name)
    assert path == entry.path
    model = Prophet.from_pretrained(path)  # finite weights that match the config, or a ConfigError
    assert model.config == get_prophet_config(entry.config)
    assert (path / WEIGHTS_NAME).stat().st_size <= 50 * 2 ** 20
    assert (path.parent / "README.md").read_text().count(entry.regenerate) >= 1


def test_the_shipped_prophet_beats_copying_the_last_frame_on_sim_episodes_it_never_saw(tmp_path):
    """Fresh seeds (never in the corpus) of the demo's pair, replayed closed loop for 3 chunks from their first
    frame: the imagined frames are nearer the real ones than the start frame is (PSNR and flow EPE)."""
    from prophrl_data.conversion import bags2dataset

    collect_direct(CollectSettings(robot="panda_sim", task="lift", episodes=3, first_seed=300_000, image_size=64),
                   tmp_path / "bags", show_progress=False)
    bags2dataset([tmp_path / "bags"], tmp_path / "data", "panda_sim", show_progress=False)
    model = Prophet.from_pretrained(resolve_prophet(SHIPPED))
    common = dict(episodes=3, chunks=3, split="all", write_videos=False, show_progress=False)
    copy = evaluate_fidelity(None, tmp_path / "data", tmp_path / "eval", config=model.config, **common)
    imagined = evaluate_fidelity(model, tmp_path / "data", tmp_path / "eval", **common)
    assert imagined["mean"]["psnr"] > copy["mean"]["psnr"] + 1.0, (imagined["mean"], copy["mean"])
    assert imagined["mean"]["flow_epe"] < copy["mean"]["flow_epe"], (imagined["mean"], copy["mean"])


def test_adapting_the_shipped_prophet_on_a_handful_of_bags_lowers_held_out_loss(tmp_path, capsys):
    """A view the corpus never had (frontview) and 4 bags: a short LoRA adaptation, named by the shipped name on
    the CLI, lowers the loss on the held-out bag (same noise and times before and after)."""
    collect_direct(CollectSettings(robot="ur5e_sim", task="lift", episodes=4, first_seed=300_000, camera="frontview",
                                   image_size=64), tmp_path / "bags", show_progress=False)
    assert main(["adapt", "--checkpoint", SHIPPED, "--bags", str(tmp_path / "bags"), "--steps", "40",
                 "--mode", "lora", "--batch-size", "4", "--out", str(tmp_path / "adapted")]) == 0
    summary = json.loads((tmp_path / "adapted" / "training_summary.json").read_text())
    assert summary["checkpoint"] == str(PRETRAINED_PROPHETS[SHIPPED].path) and summary["held_out_episodes"] == 1
    assert summary["loss_after"] < 0.95 * summary["loss_before"], summary
    adapted = Prophet.from_pretrained(tmp_path / "adapted")
    assert adapted.config.finetune == "lora" and adapted.config.flow_source == "start_frame"
    assert "adapted Prophet (lora)" in capsys.readouterr().out


def test_a_shipped_name_without_its_files_is_one_clear_error_and_other_text_is_a_path(monkeypatch, tmp_path):
    monkeypatch.setitem(PRETRAINED_PROPHETS, "absent_model",
                        PretrainedProphet("absent_model", "not installed", "tiny_32px", "scripts/rebuild.sh"))
    with pytest.raises(ConfigError, match="absent_model.*missing its weights.*scripts/rebuild.sh"):
        resolve_prophet("absent_model")
    assert resolve_prophet(tmp_path / "mine") == tmp_path / "mine"
    assert main(["adapt", "--checkpoint", "absent_model", "--data", str(tmp_path), "--steps", "1",
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_adapt_refuses_to_write_into_the_shipped_prophet(tmp_path, capsys):
    path = PRETRAINED_PROPHETS[SHIPPED].path
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert main(["adapt", "--checkpoint", SHIPPED, "--data", str(tmp_path), "--steps", "1", "--out", str(path),
                 "--overwrite"]) == 2
    assert "prophrl worldmodel adapt" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert np.isfinite(Prophet.from_pretrained(path).latent_std.numpy()).all()
