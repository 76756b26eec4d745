"""Atomic checkpoints (safetensors + JSON only) and exact resume, including after SIGKILL of a real trainer."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prophrl_common import training_state
from prophrl_common.config_io import ConfigError
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.rl_smoke import make_smoke_setup
from prophrl_trainer.train_cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_smoke_setup(tmp_path_factory.mktemp("ckpt_setup"))


def _policy(seed=0):
    torch.manual_seed(seed)
    return VLAPolicy(get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=4))


def _train_steps(policy, optimizer, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in policy.parameters()) ** 2 * 1e-6
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_state_round_trips_exactly_without_pickle(tmp_path):
    policy = _policy()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, betas=(0.8, 0.95), weight_decay=0.01)
    _train_steps(policy, optimizer, 3, seed=1)
    path = ckpt.save_checkpoint(tmp_path / "ckpts", 3, policy, optimizer,
                                {"gen": torch.Generator().manual_seed(5).get_state()},
                                {"history": [{"update": 1}], "rng": [{"python": training_state.python_rng_state()}]},
                                '{"seed": 0}')
    assert path.name == "update_000003"
    files = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert files <= {".json", ".safetensors"}, f"only safetensors and JSON, got {files}"
    assert not any(p.name.startswith(".") for p in path.parent.iterdir()), "no temporaries left behind"
    # restore into a fresh policy + optimizer, then both continue identically
    other = _policy(seed=9)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3, betas=(0.8, 0.95), weight_decay=0.01)
    rng, state = ckpt.load_checkpoint(path, other, other_opt)
    assert state["update"] == 3 and state["history"] == [{"update": 1}]
    assert isinstance(other_opt.param_groups[0]["betas"], tuple)
    g = torch.Generator()
    g.set_state(rng["gen"])
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(5)))
    _train_steps(policy, optimizer, 2, seed=2)
    _train_steps(other, other_opt, 2, seed=2)
    for a, b in zip(policy.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_rl_checkpoints_keep_the_policy_embodiment_and_refuse_another(tmp_path):
    from prophrl_policy.embodiment import Embodiment
    from prophrl_common.chunks import POLICY_STATE_NAMES

    policy = _policy()
    policy.embodiment = Embodiment("ur5e", "ee_delta_7d", POLICY_STATE_NAMES, 0.05)
    optimizer = torch.optim.Adam(policy.parameters())
    path = ckpt.save_checkpoint(tmp_path, 1, policy, optimizer, {}, {}, "{}")
    assert VLAPolicy.from_pretrained(path / ckpt.POLICY_DIR).embodiment == policy.embodiment
    resumed = _policy(seed=3)  # e.g. resuming from an SFT checkpoint saved before embodiments were recorded
    ckpt.load_checkpoint(path, resumed, torch.optim.Adam(resumed.parameters()))
    assert resumed.embodiment == policy.embodiment
    other = _policy(seed=4)
    other.embodiment = Embodiment("franka_fr3", "ee_delta_7d", POLICY_STATE_NAMES, 0.05)
    with pytest.raises(ConfigError, match="trained for .*ur5e.* is for .*franka_fr3"):
        ckpt.load_checkpoint(path, other, torch.optim.Adam(other.parameters()))


def test_keeps_the_newest_and_ignores_partial_directories(tmp_path):
    policy = _policy()
    optimizer = torch.optim.Adam(policy.parameters())
    for update in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, update, policy, optimizer, {}, {}, "{}", keep_last=2)
    assert [n for n, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    # what a crash leaves: a temporary, a trash directory, an update_* without its state file
    (tmp_path / ".tmp-update_000005-123").mkdir()
    (tmp_path / ".trash-update_000002-123").mkdir()
    (tmp_path / "update_000009").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "update_000004"
    ckpt.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update_000003", "update_000004", "update_000009"]


def test_milestones_are_kept_beyond_the_newest(tmp_path):
    policy = _policy()
    optimizer = torch.optim.Adam(policy.parameters())
    for update in range(1, 9):
        ckpt.save_checkpoint(tmp_path, update, policy, optimizer, {}, {}, "{}", keep_last=2, keep_every=3)
    assert [n for n, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6, 7, 8]
    with pytest.raises(ConfigError, match="keep_every >= 0"):
        ckpt.save_checkpoint(tmp_path, 9, policy, optimizer, {}, {}, "{}", keep_every=-1)


def test_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    policy = _policy()
    optimizer = torch.optim.Adam(policy.parameters())
    path = ckpt.save_checkpoint(tmp_path, 1, policy, optimizer, {}, {}, "{}")
    (path / ckpt.OPTIMIZER_TENSORS).write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="optimizer state"):
        ckpt.load_checkpoint(path, policy, optimizer)
    (path / ckpt.STATE_JSON).unlink()
    with pytest.raises(ConfigError, match="not an RL checkpoint"):
        ckpt.load_checkpoint(path, policy, optimizer)
    bigger = VLAPolicy(get_vla_config("tiny", hidden_dim=48, num_layers=1, num_heads=2, image_size=32, horizon=4))
    path = ckpt.save_checkpoint(tmp_path, 2, bigger, torch.optim.Adam(bigger.parameters()), {}, {}, "{}")
    with pytest.raises(ConfigError, match="policy config differs"):
        ckpt.load_checkpoint(path, policy, optimizer)


def _weights(run):
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    return latest, load_file(str(latest / ckpt.POLICY_DIR / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(setup, tmp_path):
    """Run `python -m prophrl_trainer.train_cli` in a real subprocess, SIGKILL it mid-run, resume. No update
    whose checkpoint was committed is lost, the step count is the same, and the parameters equal (bit for bit)
    those of an uninterrupted run: every random stream (policy noise, minibatch order, initial-state draws,
    world-model seeds) is restored or derived from the update count, and CPU math on one thread is
    deterministic."""
    total = 12
    config = setup.rl_config("resume.json", checkpoint_every=1, keep_checkpoints=2, eval_every=0)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "prophrl_trainer.train_cli", *setup.argv(run, total, config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            latest = ckpt.latest_checkpoint(run / "checkpoints")
            if latest is not None and int(latest.name.split("_")[1]) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the trainer ended before it was killed:\n{proc.stdout.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    latest, _ = _weights(run)
    killed_at = int(latest.name.split("_")[1])
    assert 3 <= killed_at < total
    reported = [json.loads(x)["update"] for x in (run / "progress.jsonl").read_text().splitlines() if x.strip()]
    assert reported == list(range(1, len(reported) + 1)) and killed_at >= reported[-1], \
        "every update reported finished has a committed checkpoint"
    state = json.loads((latest / ckpt.STATE_JSON).read_text())
    assert [m["update"] for m in state["history"]] == list(range(1, killed_at + 1))

    assert main(setup.argv(run, total, config, "--resume")) == 0
    assert main(setup.argv(tmp_path / "reference", total, config)) == 0
    resumed_ckpt, resumed = _weights(run)
    reference_ckpt, reference = _weights(tmp_path / "reference")
    assert resumed_ckpt.name == reference_ckpt.name == f"update_{total:06d}"
    resumed_state = json.loads((resumed_ckpt / ckpt.STATE_JSON).read_text())
    reference_state = json.loads((reference_ckpt / ckpt.STATE_JSON).read_text())
    assert [m["update"] for m in resumed_state["history"]] == list(range(1, total + 1))
    np.testing.assert_array_equal([m["rollout/reward_mean"] for m in resumed_state["history"]],
                                  [m["rollout/reward_mean"] for m in reference_state["history"]])
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    lines = [json.loads(x)["update"] for x in (run / "progress.jsonl").read_text().splitlines()]
    assert lines == list(range(1, total + 1)), "progress.jsonl holds each update once"
