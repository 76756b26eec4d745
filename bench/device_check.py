"""What a GPU machine has to show before training on it: agreement with the CPU, throughput, latency, one RL update.

    bash bench/device_check.sh                 # CUDA: the figures below, in a few minutes
    python bench/device_check.py --device cpu  # every step on the CPU (a self-test of this script)

On a machine without CUDA (and no --device) it says so in one line and exits 0. Models are built from config
with random weights (agreement and speed do not need trained ones): the demo's tiny policy and tiny_32px
Prophet. Prints:
1. agreement: the SDE log-probabilities of one denoising path recomputed on the device vs the CPU (float32),
   the PPO ratio of that path on the device under bf16 autocast (rollout and update alike: must be 1), and one
   imagined clip from the same start, actions and initial noise on the device vs the CPU (mean |pixel| diff);
2. imagination frames per second for groups of G = 1 / 8 / 32 rollouts;
3. policy latency: one ODE chunk, p50 / p95 over 50 calls;
4. one RL update (FA-GRPO + FlowScale, 4 states x G 8, 4 chunks) on the device, float32 and bf16;
5. the training verbs' cores on the device, each a few steps on a small random dataset: Prophet pretraining
   (tiny_32px_start_frame) and LoRA adaptation, policy SFT and judge training (seconds and steps/s).
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _policy(image_size: int = 96, horizon: int = 10):
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.modeling_vla import VLAPolicy

    torch.manual_seed(0)
    policy = VLAPolicy(get_vla_config("tiny", image_size=image_size, horizon=horizon)).eval()
    with torch.no_grad():  # the output layer starts at zero; give the velocity something to say
        policy.action_out[1].weight.normal_(0, 0.3)
    return policy


def _observation(batch: int, size: int = 96):
    from prophrl_policy.modeling_vla import Observation

    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)
    return Observation.from_frames(frames, ["lift the red cube"] * batch, torch.randn(batch, 8, generator=g))


def _prophet():
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet

    torch.manual_seed(0)
    return Prophet(get_prophet_config("tiny_32px")).eval()


def agreement(device: torch.device) -> list[tuple[str, str]]:
    rows = []
    cpu_policy = _policy()
    obs = _observation(8)
    sample = cpu_policy.predict_action_chunk(obs, mode="sde", generator=torch.Generator().manual_seed(2))
    cpu_lp, _, _ = cpu_policy.sde_log_probs(obs, sample.latents)
    policy = _policy().to(device)
    obs_device = type(obs)(obs.images.to(device), obs.instructions, obs.states.to(device))
    with torch.no_grad():
        device_lp, _, _ = policy.sde_log_probs(obs_device, sample.latents.to(device))
    rows.append(("SDE log-prob |device - cpu| max (float32)", f"{(device_lp.cpu() - cpu_lp).abs().max().item():.2e}"))
    policy.compute_dtype = torch.bfloat16
    rollout = policy.predict_action_chunk(obs_device, mode="sde", generator=torch.Generator(device).manual_seed(2))
    policy.train()
    update_lp, _, _ = policy.sde_log_probs(obs_device, rollout.latents)
    policy.eval()
    ratio = torch.exp((update_lp - rollout.log_probs).sum(dim=1))
    rows.append(("PPO chunk ratio under bf16, |ratio - 1| max", f"{(ratio - 1).abs().max().item():.2e}"))

    prophet = _prophet()
    start = torch.randint(0, 256, (1, 32, 32, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    actions = torch.randn(1, 1, prophet.config.action_horizon, 7, generator=torch.Generator().manual_seed(4)) * 0.01
    clip_cpu = prophet.rollout(start, actions, generator=torch.Generator().manual_seed(5))
    # the same CPU generator: the initial noise is drawn on the CPU and moved (diffusers' randn_tensor)
    clip_device = prophet.to(device).rollout(start.to(device), actions.to(device),
                                             generator=torch.Generator().manual_seed(5))
    diff = (clip_device.cpu() - clip_cpu).abs().mean().item()
    rows.append(("one imagined clip, mean |pixel| diff device vs cpu (0-255)", f"{diff:.3f}"))
    return rows


def imagination_rate(device: torch.device, groups=(1, 8, 32), chunks: int = 4) -> list[tuple[str, str]]:
    from prophrl_worldmodel.imagination import ImaginationStart, ImaginedRollouts

    prophet = _prophet().to(device)
    start = ImaginationStart(np.zeros((1, 32, 32, 3), np.uint8) + 90, "lift the red cube",
                             np.array([0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]), 0.0)
    rows = []
    for g in groups:
        rollouts = ImaginedRollouts(prophet, start, g, seed=0)
        actions = np.zeros((g, prophet.config.action_horizon, 7), np.float32)
        rollouts.step(actions)  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(chunks):
            rollouts.step(actions)
        _sync(device)
        frames = g * chunks * prophet.config.frames_per_clip
        rows.append((f"imagination G={g}: frames/s", f"{frames / (time.perf_counter() - t0):.1f}"))
    return rows


def policy_latency(device: torch.device, calls: int = 50) -> list[tuple[str, str]]:
    policy = _policy().to(device)
    obs = _observation(1)
    obs = type(obs)(obs.images.to(device), obs.instructions, obs.states.to(device))
    times = []
    for i in range(calls + 5):
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            policy.predict_action_chunk(obs)
        _sync(device)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    times.sort()
    return [("policy ODE chunk latency p50 / p95 (ms)",
             f"{1000 * statistics.median(times):.1f} / {1000 * times[int(0.95 * (len(times) - 1))]:.1f}")]


def rl_update(device: torch.device) -> list[tuple[str, str]]:
    from prophrl_trainer.rl_smoke import make_smoke_setup
    from prophrl_trainer.train_cli import TrainSettings, build_trainer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = make_smoke_setup(Path(tmp) / "setup", image_size=32, frames_per_clip=2, actions_per_frame=5)
        for precision in ("none", "bf16"):
            config = setup.rl_config(f"rl_{precision}.json", group_size=8, states_per_update=4, chunks_per_rollout=4,
                                     denoising_steps=10, imagination_steps=10, minibatch_size=64,
                                     mixed_precision=precision)
            settings = TrainSettings(policy=str(setup.policy), data=(str(setup.data),), out=str(Path(tmp) / precision),
                                     world_model=str(setup.prophet), test_reward="ee_right", config=str(config),
                                     updates=2, device=str(device))
            trainer, _ = build_trainer(settings, show_progress=False)
            trainer.train_step()  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            metrics = trainer.train_step()
            _sync(device)
            rows.append((f"one RL update ({precision}): total / imagination / policy update (s)",
                         f"{time.perf_counter() - t0:.2f} / {metrics['time/rollout_s']:.2f} / "
                         f"{metrics['time/update_s']:.2f}"))
    return rows


def training(device: torch.device) -> list[tuple[str, str]]:
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_trainer.rl_smoke import write_smoke_dataset
    from prophrl_trainer.sft import SFTConfig, load_demonstrations, train_sft
    from prophrl_worldmodel.configuration_judge import get_judge_config
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.judge_training import JudgeTrainConfig, train_judge
    from prophrl_worldmodel.training import adapt, pretrain

    rows = []

    def timed(label: str, steps: int, run) -> None:
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        seconds = time.perf_counter() - t0
        rows.append((f"{label}: {steps} steps, s (steps/s)", f"{seconds:.1f} ({steps / seconds:.1f})"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_smoke_dataset(tmp / "data", episodes=6, size=40, steps=40)
        common = dict(device=str(device), show_progress=False)
        timed("Prophet pretrain (VAE 20 + denoiser 40, batch 32)", 60, lambda: pretrain(
            data, get_prophet_config("tiny_32px_start_frame"), tmp / "prophet", vae_steps=20, steps=40,
            batch_size=32, **common))
        timed("Prophet LoRA adaptation (batch 8)", 40, lambda: adapt(
            tmp / "prophet", data, 40, mode="lora", out_dir=tmp / "adapted", **common))
        policy_config = get_vla_config("tiny", image_size=32, horizon=10)
        demos = load_demonstrations(data, policy_config.horizon, only_successful=False)
        timed("policy SFT (batch 32)", 40, lambda: train_sft(
            demos, policy_config, SFTConfig(steps=40, warmup_steps=5), tmp / "policy", **common))
        rng = np.random.default_rng(0)
        clips = rng.integers(0, 256, (16, 8, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(16) % 2
        timed("judge training (batch 32)", 40, lambda: train_judge(
            clips, labels, ["lift the red cube"] * 16, get_judge_config("tiny"), tmp / "judge", 40,
            groups=[f"episode{i}" for i in range(16)], train_config=JudgeTrainConfig(eval_every=20), **common))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="default: cuda when available")
    args = parser.parse_args()
    if args.device is None and not torch.cuda.is_available():
        print("device_check: no CUDA device on this machine, nothing to check (CPU figures: the other bench/ scripts)")
        return 0
    from prophrl_common.devices import torch_device

    device = torch_device(args.device or "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device_check on {device} ({name}), torch {torch.__version__}")
    rows: list[tuple[str, str]] = []
    for part in (agreement, imagination_rate, policy_latency, rl_update, training):
        t0 = time.perf_counter()
        rows += part(device)
        print(f"  {part.__name__}: {time.perf_counter() - t0:.1f} s", flush=True)
    from prophrl_common.tables import format_table

    print(format_table(f"\ndevice check ({device})", ["figure", "value"], [list(r) for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
