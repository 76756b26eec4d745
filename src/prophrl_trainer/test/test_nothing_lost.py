"""Nothing lost to a user's mistake: outputs checked before training, no non-finite checkpoint ever, configs
checked at load, one clear error line from the CLI."""

import json

import numpy as np
import pytest
import torch

from prophrl.cli import main as prophrl_main
from prophrl_common.config_io import ConfigError
from prophrl_common.weights import NonFiniteError
from prophrl_policy.configuration_vla import VLAConfig, get_vla_config
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.rl_config import RLConfig
from prophrl_trainer.rl_smoke import make_smoke_setup, write_smoke_dataset
from prophrl_trainer.train_cli import TrainSettings, build_parser, build_trainer
from prophrl_trainer.sft import SFTConfig


def _tree(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _sft(tmp_path, dataset, out, *extra):
    return prophrl_main(["policy", "sft", "--dataset", str(dataset), "--out", str(out), "--steps", "3",
                         "--batch-size", "4", *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_smoke_dataset(tmp_path_factory.mktemp("sft_data") / "data", episodes=2, size=32)


def _one_error_line(capsys, expected):
    """stderr holds one error line with `expected` (besides progress bars) and no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "Traceback" not in err and expected in errors[0], err
    return errors[0]


def test_sft_never_replaces_its_dataset_or_a_foreign_directory(dataset, tmp_path, capsys):
    """Regression: `prophrl policy sft --out EXISTING` wiped a dataset given as --out."""
    before = _tree(dataset)
    for extra in ([], ["--overwrite"]):
        assert _sft(tmp_path, dataset, dataset, *extra) == 2
        _one_error_line(capsys, "is the input")
    assert _tree(dataset) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert _sft(tmp_path, dataset, foreign) == 2
    _one_error_line(capsys, "already exists (pass --overwrite")
    assert _sft(tmp_path, dataset, foreign, "--overwrite") == 2
    _one_error_line(capsys, "is not a previous SFT policy checkpoint (it holds notes.txt)")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_sft_keeps_its_tensorboard_log_and_a_bad_out_fails_before_training(dataset, tmp_path, capsys):
    """Regression: the default OUT/tensorboard log was deleted by the checkpoint save; an --out under a file
    failed only after training."""
    out = tmp_path / "policy"
    assert _sft(tmp_path, dataset, out) == 0
    capsys.readouterr()
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "the run's TensorBoard log survives the save"
    assert VLAPolicy.from_pretrained(out).config.name == "tiny"
    first_log = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert _sft(tmp_path, dataset, out, "--overwrite") == 0  # a previous SFT output may be replaced on request
    capsys.readouterr()
    assert set(first_log) < {p.name for p in (out / "tensorboard").iterdir()}
    (tmp_path / "a_file").write_text("x")
    assert _sft(tmp_path, dataset, tmp_path / "a_file" / "policy") == 2
    _one_error_line(capsys, "cannot be created: ")
    assert not (tmp_path / "a_file.tensorboard").exists()


def test_a_diverging_sft_run_stops_and_keeps_the_previous_checkpoint(dataset, tmp_path, capsys):
    """Regression: an infinite / huge learning rate committed a checkpoint of NaN weights over a good one."""
    out = tmp_path / "policy"
    assert _sft(tmp_path, dataset, out) == 0
    good = {name: data for name, data in _tree(out).items() if not name.startswith("tensorboard")}
    assert _sft(tmp_path, dataset, out, "--overwrite", "--lr", "1e30", "--steps", "20") == 2
    _one_error_line(capsys, "training diverged")
    assert {name: data for name, data in _tree(out).items() if not name.startswith("tensorboard")} == good
    assert _sft(tmp_path, dataset, tmp_path / "p2", "--lr", "inf") == 2
    _one_error_line(capsys, "learning_rate must be a finite number")
    assert not (tmp_path / "p2").exists()


def _distill(teacher, dataset, out, *extra):
    return prophrl_main(["policy", "distill", "--checkpoint", str(teacher), "--dataset", str(dataset),
                         "--out", str(out), "--steps", "2", "--batch-size", "4", *extra])


def test_distill_never_replaces_its_teacher_or_dataset_and_a_bad_step_count_fails_before_work(dataset, tmp_path,
                                                                                              capsys):
    teacher = tmp_path / "teacher"
    assert _sft(tmp_path, dataset, teacher) == 0
    before, data_before = _tree(teacher), _tree(dataset)
    for out in (teacher, dataset):
        assert _distill(teacher, dataset, out, "--overwrite") == 2
        _one_error_line(capsys, "is the input")
    assert _distill(teacher, dataset, tmp_path / "student", "--num-steps", "0") == 2
    _one_error_line(capsys, "num_steps must be >= 1")
    assert _distill(teacher, dataset, tmp_path / "student", "--num-steps", "4") == 2
    _one_error_line(capsys, "must be fewer than the teacher's 10 and divide them")
    assert not (tmp_path / "student").exists()
    assert _distill(teacher, dataset, tmp_path / "student", "--num-steps", "5") == 0
    assert "distilled student" in capsys.readouterr().out
    assert VLAPolicy.from_pretrained(tmp_path / "student").config.num_inference_steps == 5
    summary = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert summary["validation"] == "held-out episodes" and summary["teacher_steps"] == 10
    assert _tree(teacher) == before and _tree(dataset) == data_before


def test_a_non_finite_policy_is_never_checkpointed_nor_rotated_in(tmp_path):
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32))
    optimizer = torch.optim.AdamW(policy.parameters())
    ckpt.save_checkpoint(tmp_path, 1, policy, optimizer, {}, {}, "{}", keep_last=1)
    good = _tree(tmp_path)
    with torch.no_grad():
        next(policy.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="hold NaN/inf"):
        ckpt.save_checkpoint(tmp_path, 2, policy, optimizer, {}, {}, "{}", keep_last=1)
    assert _tree(tmp_path) == good and [n for n, _ in ckpt.list_checkpoints(tmp_path)] == [1]


def test_a_diverging_rl_run_stops_with_its_last_good_checkpoint(tmp_path):
    setup = make_smoke_setup(tmp_path / "setup")
    config = setup.rl_config(checkpoint_every=1, keep_checkpoints=1, states_per_update=1, group_size=2)
    args = build_parser().parse_args(setup.argv(tmp_path / "run", 3, config))
    trainer, _ = build_trainer(TrainSettings.from_args(args), show_progress=False)
    trainer.run(1)
    checkpoint = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    good = _tree(checkpoint)
    for group in trainer.optimizer.param_groups:  # the step size of a diverging run
        group["lr"] = 1e30
    with pytest.raises(NonFiniteError, match="RL update 2"):
        trainer.run(3)
    assert [n for n, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [1]
    assert _tree(checkpoint) == good
    VLAPolicy.from_pretrained(checkpoint / ckpt.POLICY_DIR)


@pytest.mark.parametrize("fields, problem", [
    ({"num_heads": 0}, "num_heads must be positive"),
    ({"dropout": 5.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": float("nan")}, "dropout must be a finite number"),
    ({"time_beta_alpha": float("inf")}, "time_beta_alpha must be a finite number"),
])
def test_policy_config_errors_are_one_clear_config_error(fields, problem):
    """Regression: num_heads 0 raised ZeroDivisionError, dropout 5.0 / NaN were accepted."""
    with pytest.raises(ConfigError, match=problem):
        VLAConfig(**fields).validate()


def test_rl_and_sft_configs_refuse_non_finite_numbers(tmp_path):
    """Regression: learning_rate Infinity was accepted (and trained NaN weights)."""
    path = tmp_path / "rl.json"
    path.write_text('{"learning_rate": Infinity}')
    with pytest.raises(ConfigError, match="learning_rate: expected a finite number"):
        RLConfig.from_json_file(path)
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        RLConfig(learning_rate=float("inf"))
    with pytest.raises(ConfigError, match="w_max: expected a finite number"):
        RLConfig.from_dict({"flowscale": {"w_max": float("inf")}})
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        SFTConfig(learning_rate=float("inf"))


def test_a_checkpoint_config_must_be_complete(tmp_path):
    """Regression: a checkpoint without num_inference_steps sampled with today's default (10) instead of 3."""
    policy = VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32,
                                      num_inference_steps=3))
    policy.save_pretrained(tmp_path / "policy")
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    del config["num_inference_steps"]
    (tmp_path / "policy" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="missing required key 'num_inference_steps'"):
        VLAPolicy.from_pretrained(tmp_path / "policy")
    saved = json.loads(RLConfig().to_json())
    del saved["noise_level"]
    (tmp_path / "rl_config.json").write_text(json.dumps(saved))
    RLConfig.from_json_file(tmp_path / "rl_config.json")  # a user's config may leave fields out
    with pytest.raises(ConfigError, match="missing required key 'noise_level'"):
        RLConfig.from_json_file(tmp_path / "rl_config.json", complete=True)


def test_cli_path_errors_are_one_line(tmp_path, capsys):
    """Regression: OSError on a path (here --out under a file) was a traceback."""
    (tmp_path / "file").write_text("x")
    assert prophrl_main(["collect", "--direct", "--episodes", "1", "--out", str(tmp_path / "file" / "bags")]) == 2
    _one_error_line(capsys, "prophrl collect: error:")
    assert prophrl_main(["worldmodel", "pretrain", "--data", str(tmp_path), "--out",
                         str(tmp_path / "file" / "prophet")]) == 2
    _one_error_line(capsys, "cannot be created")
    assert prophrl_main(["judge", "train", "--data", str(tmp_path), "--out", str(tmp_path / "j")]) == 2
    _one_error_line(capsys, "not a bags2dataset output")


def test_prophet_and_judge_outputs_are_checked_before_any_work(dataset, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert prophrl_main(["worldmodel", "pretrain", "--data", str(dataset), "--out", str(foreign), "--overwrite",
                         "--steps", "1", "--vae-steps", "0"]) == 2
    _one_error_line(capsys, "is not a previous Prophet checkpoint")
    assert prophrl_main(["worldmodel", "pretrain", "--data", str(dataset), "--out", str(dataset), "--overwrite",
                         "--steps", "1"]) == 2
    _one_error_line(capsys, "is the input")
    assert prophrl_main(["worldmodel", "pretrain", "--data", str(dataset), "--out", str(tmp_path / "p"),
                         "--lr", "inf"]) == 2
    _one_error_line(capsys, "lr must be a positive finite number")
    assert prophrl_main(["judge", "train", "--data", str(dataset), "--out", str(dataset), "--overwrite"]) == 2
    _one_error_line(capsys, "is the input")
    assert prophrl_main(["judge", "eval", "--data", str(dataset), "--judge", str(foreign), "--out", str(dataset)]) == 2
    _one_error_line(capsys, "is the input")
    assert prophrl_main(["worldmodel", "eval", "--data", str(dataset), "--out", str(foreign)]) == 2
    _one_error_line(capsys, "is not a previous fidelity evaluation (it holds notes.txt)")
    assert (foreign / "notes.txt").read_text() == "keep me" and (dataset / "index.json").is_file()
    assert np.load(dataset / "shards" / "episode_000000.npz")["frames"].shape[0] > 0


def test_a_diverging_judge_run_stops_and_keeps_the_previous_judge(tmp_path):
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.judge_training import JudgeTrainConfig, train_judge

    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8) for _ in range(8)]
    labels, instructions = [1, 0] * 4, ["lift"] * 8
    config = get_judge_config("tiny", image_size=16, cnn_channels=(8, 8))
    out = tmp_path / "judge"
    train_judge(clips, labels, instructions, config, out, 2, show_progress=False)
    good = _tree(out)
    with pytest.raises(NonFiniteError, match="judge training: the loss became"):
        train_judge(clips, labels, instructions, config, out, 30, show_progress=False, overwrite=True,
                    train_config=JudgeTrainConfig(batch_size=4, learning_rate=1e30, warmup_steps=0))
    assert _tree(out) == good


def test_a_diverging_prophet_run_stops_and_keeps_the_previous_checkpoint(tmp_path):
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.training import pretrain

    data = write_smoke_dataset(tmp_path / "data", episodes=2, size=32, steps=8)
    index = json.loads((data / "index.json").read_text())
    (data / "index.json").write_text(json.dumps({**index, "action_dim": 7, "control_period_s": 0.05}))
    config = get_prophet_config("tiny_32px", num_layers=1, ffn_dim=32, frames_per_clip=2, actions_per_frame=2)
    out = tmp_path / "prophet"
    pretrain([data], config, out, vae_steps=1, steps=1, batch_size=2, show_progress=False, held_out_fraction=0.0)
    good = _tree(out)
    with pytest.raises(NonFiniteError, match="the loss became"):
        pretrain([data], config, out, vae_steps=0, steps=30, batch_size=2, lr=1e30, show_progress=False,
                 held_out_fraction=0.0, overwrite=True)
    assert _tree(out) == good


def test_an_evaluation_report_is_never_written_into_another_kind_of_directory(tmp_path, capsys):
    """Regression: `prophrl eval --out` wrote its summary.json over whatever directory it was given."""
    VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32)).save_pretrained(
        tmp_path / "policy")
    before = _tree(tmp_path / "policy")
    for out, problem in ((tmp_path / "policy", "is the input"), (tmp_path, "holds the input")):
        assert prophrl_main(["eval", "--policy", f"SFT={tmp_path / 'policy'}", "--out", str(out)]) == 2
        _one_error_line(capsys, problem)
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text("{}")
    assert prophrl_main(["eval", "--policy", f"SFT={tmp_path / 'policy'}", "--out", str(judge)]) == 2
    _one_error_line(capsys, "is not a previous evaluation report (it holds config.json)")
    assert _tree(tmp_path / "policy") == before and (judge / "config.json").read_text() == "{}"
