"""Prophet pretraining, LoRA / full adaptation, fidelity evaluation and the `prophrl worldmodel` CLI on tiny data."""

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prophrl_common.geometry import CameraCalibration, EndEffectorPose
from prophrl_worldmodel.action_frames import ActionFrameStyle, render_action_frame
from prophrl_worldmodel.cli import main
from prophrl_worldmodel.clips import load_episodes, replay_episode, split_episodes
from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.metrics import psnr
from prophrl_worldmodel.modeling_prophet import WEIGHTS_NAME, Prophet
from prophrl_worldmodel.training import SUMMARY_NAME, adapt, adapt_from_bags, evaluate_fidelity, pretrain

SIZE = 32
CONFIG = get_prophet_config("tiny", image_size=SIZE, num_layers=2, head_dim=16, ffn_dim=64, freq_dim=32,
                            context_dim=32)
LOOK_DOWN = np.array([[1, 0, 0, -0.5], [0, -1, 0, 0], [0, 0, -1, 1.5], [0, 0, 0, 1]], float)
CAMERA = {"k": [40.0, 0, 15.5, 0, 40.0, 15.5, 0, 0, 1], "width": SIZE, "height": SIZE,
          "world_to_camera": LOOK_DOWN.reshape(-1).tolist()}


def write_world(root, episodes, background, colour, seed, robot="panda_sim", steps=60, step_m=0.02):
    """A bags2dataset directory of a toy world: a camera looks down on a disk (the end effector) that the
    ee_delta_7d actions move over a plain background, in a new random direction every 10 steps."""
    rng = np.random.default_rng(seed)
    calibration = CameraCalibration.from_camera_info(CAMERA["k"], LOOK_DOWN, SIZE, SIZE)
    style = ActionFrameStyle(disk_radius_m=0.12, axis_length_m=0.0, background=background, open_color=colour,
                             closed_color=colour)
    (root / "shards").mkdir(parents=True)
    entries = []
    for e in range(episodes):
        position = np.array([0.5 + rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), 0.2])
        frames, poses, actions = [], [], []
        for i in range(steps):
            if i % 10 == 0:
                direction = rng.normal(size=2)
                direction /= np.linalg.norm(direction)
            action = np.zeros(7, np.float32)
            action[:2] = step_m * direction
            outside = np.abs(position[:2] + action[:2] - [0.5, 0.0]) > 0.3
            action[:2][outside] *= -1
            poses.append(np.r_[position, 0, 0, 0, 1])
            frames.append(render_action_frame(calibration, [EndEffectorPose.from_quaternion(position, [0, 0, 0, 1],
                                                                                            0.0)], style))
            actions.append(action)
            position = position + action[:3]
        shard = f"shards/episode_{e:06d}.npz"
        np.savez(root / shard, frames=np.stack(frames), ee_pose=np.stack(poses).astype(np.float32),
                 actions=np.stack(actions))
        entries.append({"shard": shard, "episode_id": f"{robot}_{seed}_{e}", "task": "move", "instruction": "move",
                        "success": True, "num_samples": steps, "camera": CAMERA})
    (root / "index.json").write_text(json.dumps({
        "format": "prophrl-samples-v1", "robot": robot, "action_space": "ee_delta_7d", "action_dim": 7,
        "horizon": 8, "control_period_s": 0.05, "image_shape": [SIZE, SIZE, 3], "episodes": entries}))
    return root


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    source = write_world(root / "source", 10, (40, 40, 40), (255, 255, 0), seed=0)
    target = write_world(root / "target", 10, (70, 30, 30), (0, 200, 255), seed=1, robot="ur5e_sim")
    checkpoint = pretrain([source], CONFIG, root / "pretrained", vae_steps=40, steps=60, batch_size=4, lr=2e-3,
                          seed=0, log_dir=root / "tb", show_progress=False)
    return root, source, target, checkpoint


def test_pretrain_lowers_the_loss_and_saves_a_loadable_checkpoint(worlds):
    root, source, _, checkpoint = worlds
    summary = json.loads((checkpoint / SUMMARY_NAME).read_text())
    assert summary["train_episodes"] == 8 and summary["held_out_episodes"] == 2
    assert summary["vae_l1_last"] < 0.5 * summary["vae_l1_first"]
    assert summary["loss_last"] < 0.8 * summary["loss_first"]
    assert np.isfinite(summary["held_out_loss"])
    assert list((root / "tb").glob("events.out.tfevents.*"))
    model = Prophet.from_pretrained(checkpoint)
    assert model.config == CONFIG
    assert model.action_std[0] > 0.005 and model.action_std[2] == pytest.approx(1e-3)  # fitted on the actions
    replay = replay_episode(load_episodes(source, SIZE)[0], model.config, chunks=1)
    clip = model.generate(replay.start_frame[None], replay.history_frames[None], replay.action_chunks[:, :, :], 2,
                          torch.Generator().manual_seed(0), action_frames=replay.action_frames,
                          calibrated=np.array([True]))
    assert clip.shape == (1, CONFIG.frames_per_clip, SIZE, SIZE, 3) and torch.isfinite(clip).all()


def test_pretrain_from_another_prophets_vae_keeps_it_and_fits_residual_statistics(worlds, tmp_path, capsys):
    root, source, _, checkpoint = worlds
    out = tmp_path / "residual"
    assert main(["pretrain", "--data", str(source), "--out", str(out), "--config", "tiny", "--image-size", str(SIZE),
                 "--vae-from", str(checkpoint), "--vae-steps", "0", "--steps", "2", "--batch-size", "2",
                 "--residual", "on"]) == 0
    # the CLI's named config differs from CONFIG in the transformer only: the VAE fits
    base, model = Prophet.from_pretrained(checkpoint), Prophet.from_pretrained(out)
    assert model.config.predict_residual and not base.config.predict_residual
    for name, tensor in base.vae.state_dict().items():
        torch.testing.assert_close(model.vae.state_dict()[name], tensor)
    torch.testing.assert_close(model.latent_std, base.latent_std)
    assert torch.all(model.residual_std > 0) and torch.all(model.residual_std != 1.0), "fitted on the training clips"

    capsys.readouterr()
    assert main(["pretrain", "--data", str(source), "--out", str(tmp_path / "bad"), "--config", "tiny",
                 "--image-size", "64", "--vae-from", str(checkpoint), "--vae-steps", "0", "--steps", "1"]) == 2
    assert "VAE was trained at 32 px" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_pretrain_takes_the_vae_of_the_shipped_prophet_by_its_name(worlds, tmp_path):
    from prophrl_worldmodel.pretrained import PRETRAINED_PROPHETS

    _, source, _, _ = worlds
    shipped = next(iter(PRETRAINED_PROPHETS.values()))
    out = tmp_path / "from_shipped"
    assert main(["pretrain", "--data", str(source), "--out", str(out), "--config", shipped.config,
                 "--vae-from", shipped.name, "--vae-steps", "0", "--steps", "1", "--batch-size", "2"]) == 0
    base, model = Prophet.from_pretrained(shipped.path), Prophet.from_pretrained(out)
    for name, tensor in base.vae.state_dict().items():
        torch.testing.assert_close(model.vae.state_dict()[name], tensor)


def test_pretrain_records_the_vae_colour_weight_and_rejects_a_negative_one(worlds, tmp_path, capsys):
    root, source, _, checkpoint = worlds
    common = ["pretrain", "--data", str(source), "--config", "tiny", "--image-size", str(SIZE), "--vae-from",
              str(checkpoint), "--vae-steps", "2", "--steps", "1", "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "colour"), "--vae-colour-weight", "20"]) == 0
    assert Prophet.from_pretrained(tmp_path / "colour").config.vae_colour_weight == 20
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--vae-colour-weight", "-1"]) == 2
    err = capsys.readouterr().err
    assert "vae_colour_weight must be >= 0" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


def test_worldmodel_and_judge_verbs_refuse_a_device_this_machine_lacks(worlds, tmp_path, capsys):
    from prophrl_worldmodel.judge_cli import main as judge_main

    _, source, _, _ = worlds
    assert main(["pretrain", "--data", str(source), "--out", str(tmp_path / "p"), "--device", "cuda:99"]) == 2
    assert judge_main(["train", "--data", str(source), "--out", str(tmp_path / "j"), "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err
    assert err.count("--device cuda:99") == 2 and not (tmp_path / "p").exists() and not (tmp_path / "j").exists()


def test_lora_adaptation_changes_only_adapters_and_lowers_held_out_loss(worlds, tmp_path):
    _, _, target, checkpoint = worlds
    calls = []
    result = adapt(checkpoint, [target], steps=40, mode="lora", out_dir=tmp_path / "adapted",
                   progress=lambda step, total, loss: calls.append((step, total, loss)), batch_size=4, seed=0,
                   show_progress=False)
    metrics = result.metrics
    assert metrics["loss_after"] < metrics["loss_before"] - 0.02, metrics
    assert metrics["held_out_episodes"] == 2 and metrics["train_episodes"] == 8
    assert [c[0] for c in calls] == list(range(1, 41)) and all(c[1] == 40 for c in calls)
    before = load_file(str(checkpoint / WEIGHTS_NAME))
    after = load_file(str(result.checkpoint_path / WEIGHTS_NAME))
    adapters = sorted(k for k in after if "lora_" in k)
    base = {k.replace(".base_layer.", "."): v for k, v in after.items() if "lora_" not in k}  # peft's wrapped layers
    assert adapters and set(base) == set(before)
    for key, tensor in before.items():
        assert torch.equal(tensor, base[key]), f"{key} changed"
    assert all(after[k].abs().sum() > 0 for k in adapters if "lora_B" in k)   # lora_B starts at zero
    adapted = Prophet.from_pretrained(result.checkpoint_path)
    assert adapted.config.finetune == "lora"
    assert metrics["trainable_parameters"] == sum(p.numel() for p in adapted.denoiser_parameters())


def test_full_adaptation_trains_the_denoiser_and_keeps_the_vae(worlds, tmp_path):
    _, _, target, checkpoint = worlds
    result = adapt(checkpoint, [target], steps=2, mode="full", out_dir=tmp_path / "full", batch_size=2,
                   show_progress=False)
    before = load_file(str(checkpoint / WEIGHTS_NAME))
    after = load_file(str(result.checkpoint_path / WEIGHTS_NAME))
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vae.") or "_mean" in k or "_std" in k)
    assert not torch.equal(before["transformer.proj_out.weight"], after["transformer.proj_out.weight"])


def test_adapting_with_a_motion_weight_records_it_and_reports_the_plain_held_out_loss(worlds, tmp_path, capsys):
    _, _, target, checkpoint = worlds
    common = ["adapt", "--checkpoint", str(checkpoint), "--data", str(target), "--steps", "1", "--mode", "full",
              "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "weighted"), "--motion-weight", "3"]) == 0
    assert Prophet.from_pretrained(tmp_path / "plain").config.motion_loss_weight == 0
    assert Prophet.from_pretrained(tmp_path / "weighted").config.motion_loss_weight == 3
    plain, weighted = (json.loads((tmp_path / name / SUMMARY_NAME).read_text()) for name in ("plain", "weighted"))
    # the same model on the same held-out clips, noise and times: the held-out loss ignores the training weighting
    assert weighted["loss_before"] == pytest.approx(plain["loss_before"], rel=1e-6)
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--motion-weight", "-1"]) == 2
    err = capsys.readouterr().err
    assert "motion_loss_weight must be >= 0" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


def test_evaluate_fidelity_writes_videos_and_the_baseline_beats_noise(worlds, tmp_path):
    _, source, _, checkpoint = worlds
    baseline = evaluate_fidelity(None, [source], tmp_path, episodes=2, chunks=2, config=CONFIG, show_progress=False)
    assert baseline["num_episodes"] == 2 and len(baseline["horizon"]["psnr"]) == 2 * CONFIG.frames_per_clip
    assert json.loads((tmp_path / "fidelity_baseline.json").read_text())["mean"]["psnr"] == pytest.approx(
        baseline["mean"]["psnr"])
    # uniform noise against the same real frames at horizon 1
    held_out = split_episodes(load_episodes(source, SIZE), 0.2)[1]
    rng = np.random.default_rng(0)
    noise = np.mean([psnr(rng.integers(0, 256, (SIZE, SIZE, 3)), replay_episode(e, CONFIG, 1).real_frames[0])
                     for e in held_out])
    assert baseline["horizon"]["psnr"][0] > noise + 5
    assert baseline["horizon"]["ssim"][0] > 0.5
    model = Prophet.from_pretrained(checkpoint)
    report = evaluate_fidelity(model, [source], tmp_path, episodes=1, chunks=2, num_steps=2, label="pretrained",
                               show_progress=False)
    assert report["num_steps"] == 2 and all(np.isfinite(report["mean"][m]) for m in ("psnr", "ssim", "flow_epe"))
    (video,) = report["videos"]
    capture = cv2.VideoCapture(video)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 1 + 2 * CONFIG.frames_per_clip            # the start frame + the imagined frames
    assert frames[0].shape[1] > 2 * frames[0].shape[0] - 8          # real | imagined side by side


def test_cli_rejects_a_missing_dataset_with_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    assert main(["eval", "--data", str(missing), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_dataset" in err and "not a bags2dataset output" in err
    assert main(["pretrain", "--data", str(missing), "--out", str(tmp_path / "ckpt"), "--steps", "1"]) == 2
    assert "dataset directory not found" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_cli_eval_writes_summary_for_baseline_and_checkpoints(worlds, tmp_path, capsys):
    _, source, _, checkpoint = worlds
    assert main(["eval", "--data", str(source), "--checkpoint", str(checkpoint), "--labels", "pretrained",
                 "--out", str(tmp_path), "--episodes", "1", "--chunks", "1", "--num-steps", "1", "--no-videos"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["models"]) == {"baseline", "pretrained"}
    out = capsys.readouterr().out
    assert "baseline" in out and "pretrained" in out and "PSNR" in out


def test_adapt_from_bags_reads_the_robot_from_the_bags(worlds, tmp_path):
    from prophrl_trainer.collect import CollectSettings, collect_direct

    _, _, _, checkpoint = worlds
    collect_direct(CollectSettings(robot="ur5e_sim", task="lift", episodes=2, max_steps=45, camera="frontview",
                                   image_size=SIZE), tmp_path / "bags", show_progress=False)
    result = adapt_from_bags(checkpoint, [tmp_path / "bags"], steps=2, mode="lora", out_dir=tmp_path / "adapted",
                             dataset_dir=tmp_path / "data", batch_size=2, show_progress=False)
    assert result.metrics["bags"] == 2 and result.metrics["held_out_episodes"] == 1
    index = json.loads((tmp_path / "data" / "dataset_ur5e_sim" / "index.json").read_text())
    assert index["robot"] == "ur5e_sim" and index["episodes"][0]["camera"] is not None
    assert Prophet.from_pretrained(result.checkpoint_path).config.finetune == "lora"


class _Interrupt(Exception):
    pass


def _crash_at(step_to_crash):
    def progress(step, _steps, _loss):
        if step == step_to_crash:
            raise _Interrupt(f"interrupted after denoiser step {step}")
    return progress


def _weights(checkpoint):
    return load_file(str(checkpoint / WEIGHTS_NAME))


def test_an_interrupted_pretraining_continues_from_its_state_as_if_never_stopped(worlds, tmp_path):
    _, source, _, _ = worlds
    common = dict(vae_steps=4, steps=6, batch_size=2, seed=3, show_progress=False)
    reference = pretrain([source], CONFIG, tmp_path / "reference", **common)
    state = tmp_path / "state"
    with pytest.raises(_Interrupt):
        pretrain([source], CONFIG, tmp_path / "resumed", state_dir=state, save_every=2, progress=_crash_at(5),
                 **common)
    assert not (tmp_path / "resumed").exists()
    saved = json.loads((state / "state.json").read_text())
    assert (saved["phase"], saved["step"], len(saved["vae_losses"]), len(saved["losses"])) == ("denoiser", 4, 4, 4)
    resumed = pretrain([source], CONFIG, tmp_path / "resumed", state_dir=state, save_every=2, **common)
    expected, got = _weights(reference), _weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "the resumed run's weights differ"
    first, second = (json.loads((c / SUMMARY_NAME).read_text()) for c in (reference, resumed))
    for key in ("vae_l1_first", "vae_l1_last", "loss_first", "loss_last", "held_out_loss"):
        assert first[key] == second[key], key


def test_a_pretraining_killed_in_its_vae_phase_resumes_from_the_cli(worlds, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _, source, _, _ = worlds
    # The kill lands some time after the test sees step 3: 100 VAE steps leave room for a stalled test process.
    args = ["pretrain", "--data", str(source), "--config", "tiny", "--image-size", str(SIZE), "--vae-steps", "100",
            "--steps", "3", "--batch-size", "2", "--seed", "1"]
    cli = [sys.executable, "-m", "prophrl_worldmodel.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([*cli, *args, "--out", str(tmp_path / "reference")], env=env, check=True, capture_output=True)
    state = tmp_path / "state"
    resumed = [*cli, *args, "--out", str(tmp_path / "resumed"), "--state-dir", str(state), "--save-every", "1"]
    proc = subprocess.Popen(resumed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                saved = json.loads((state / "state.json").read_text())
            except (OSError, json.JSONDecodeError):
                saved = {}
            if saved.get("phase") == "vae" and saved.get("step", 0) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed in its VAE phase"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = json.loads((state / "state.json").read_text())
    assert saved["phase"] == "vae" and 3 <= saved["step"] < 100, saved["step"]
    assert not (tmp_path / "resumed").exists()
    subprocess.run(resumed, env=env, check=True, capture_output=True)
    expected, got = _weights(tmp_path / "reference"), _weights(tmp_path / "resumed")
    assert all(torch.equal(expected[k], got[k]) for k in expected), "the resumed run's weights differ"


def test_a_state_of_another_run_or_a_foreign_directory_is_refused_and_left_alone(worlds, tmp_path, capsys):
    _, source, _, _ = worlds
    state = tmp_path / "state"
    common = ["pretrain", "--data", str(source), "--config", "tiny", "--image-size", str(SIZE), "--vae-steps", "2",
              "--batch-size", "2", "--state-dir", str(state), "--save-every", "1"]
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "first")]) == 0
    before = (state / "state.json").read_text()
    capsys.readouterr()
    assert main([*common, "--steps", "3", "--out", str(tmp_path / "second")]) == 2
    err = capsys.readouterr().err
    assert "holds the state of another pretraining run (its steps differ)" in err and "Traceback" not in err
    assert (state / "state.json").read_text() == before and not (tmp_path / "second").exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main([*common[:-4], "--state-dir", str(foreign), "--steps", "2", "--out", str(tmp_path / "third")]) == 2
    assert "not a Prophet pretraining state" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not (tmp_path / "third").exists()
