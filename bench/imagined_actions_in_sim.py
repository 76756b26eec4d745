"""Do the actions a policy takes inside Prophet work on the robot? The same policy, the same starts, two worlds.

A policy's chunks are collected the way RL collects them (`imagined_rollouts.imagine`, SDE sampling, no early
termination), from the same sim seeds, twice:
- on the sim's own frames (sim_backend.SimRollouts): the policy's true success within the rollout's steps;
- on Prophet's frames, every chunk also executed by a sim from the same seed (sim_replay.ReplayedInSim): the
  true success of the actions RL would reinforce in imagination.
The sim's own success is the reward in both, so no judge is involved. Also printed: how far Prophet's integrated
end-effector position (the proprio the policy reads in imagination) drifts from the replaying sim's, per chunk.
Four more rows say where the gap comes from (diagnoses; no world model can run them):
- Prophet's frames with the policy reading the replaying sim's measured pose: what Prophet's frames alone cost;
- Prophet imagining every chunk from the sim's frames and pose: only one chunk of Prophet's error, none compounded;
- the sim's frames reduced to Prophet's image size, and through Prophet's VAE: what its resolution and its
  autoencoder cost, before any prediction.

    python bench/imagined_actions_in_sim.py --policy outputs/demo/policy_sft --world-model outputs/demo/prophet \\
        --starts 20 --rollouts 8

On a `prophrl demo`'s outputs, the gap between the two success figures is how much the world model's frames
mislead the policy; a policy RL trains in imagination can only gain where the second figure is not zero.
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from prophrl_common.tables import print_table
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_trainer.imagined_rollouts import ImaginationSettings, derived_seed, imagine
from prophrl_trainer.rl_config import RLConfig
from prophrl_trainer.rollouts import InProcessImagination
from prophrl_trainer.sim_backend import SimRollouts, SimSuccessScorer, parse_sim, sim_starts
from prophrl_trainer.sim_replay import REPLAY_IMAGE_SIZE, ReplayedInSim
from prophrl_trainer.success_statistics import wilson_interval

# Sim seeds of the starts: above RL's training pool (sim_backend.SIM_RL_FIRST_SEED, `prophrl train --sim-states`
# seeds from there) and every held-out evaluation seed, so RL never trained on them.
FIRST_SEED = 950_000
# --rows: the sim's own frames, Prophet's replayed, Prophet's with the sim's pose, Prophet's one chunk from the sim's,
# the sim's at Prophet's image size, the sim's through Prophet's VAE
ROWS = ("sim", "replayed", "sim-pose", "reanchored", "sim-small", "sim-vae")


class DriftRecorded(ReplayedInSim):
    """ReplayedInSim that records, after every chunk, the distance between the world model's integrated
    end-effector position and the replaying sim's (metres, per rollout)."""

    def __init__(self, world, sim):
        super().__init__(world, sim)
        self.drift: dict[int, list[np.ndarray]] = {}

    def step(self, groups, chunks):
        super().step(groups, chunks)
        for group in groups:
            true = self.replay_of(group).state
            self.drift.setdefault(len(group.states) - 1, []).append(
                np.linalg.norm(group.state[:, :3] - true[:, :3], axis=1))


class TrueProprio(ReplayedInSim):
    """ReplayedInSim whose rollouts read the replaying sim's measured end-effector pose instead of the world
    model's integrated one: what Prophet's frames alone cost (a diagnosis; no world model can do this)."""

    def step(self, groups, chunks):
        super().step(groups, chunks)
        for group in groups:
            group.states[-1] = self.replay_of(group).state.copy()


class SeenThrough:
    """SimRollouts whose policy reads each camera frame after the first as `see` turns it (a diagnosis: which
    step of Prophet's image pipeline costs the policy its success)."""

    def __init__(self, sim: SimRollouts, see):
        self.sim, self.see = sim, see
        self.action_horizon, self.max_rollouts = sim.action_horizon, sim.max_rollouts
        self.knows_ground_truth = True

    def open(self, starts, num_rollouts, seeds):
        return self.sim.open(starts, num_rollouts, seeds)

    def step(self, groups, chunks):
        self.sim.step(groups, chunks)
        for group in groups:
            group.current_frames = self.see(group.current_frames)

    def close(self, groups):
        self.sim.close(groups)

    def shutdown(self):
        self.sim.shutdown()


class Reanchored(TrueProprio):
    """TrueProprio whose world model imagines every chunk from the replaying sim's frames and pose instead of its
    own earlier clips: the policy still reads Prophet's frames, but each is only one chunk ahead of the truth. The
    part of the gap this row closes is Prophet's error compounding over chunks; what is left, the error of a single
    chunk's prediction (a diagnosis; the replaying sims render every control step at the camera's size)."""

    def step(self, groups, chunks):
        super().step(groups, chunks)
        for group in groups:
            replay, apf = self.replay_of(group), group.handle.model.config.actions_per_frame
            state = np.asarray(replay.state)  # (G, 8): x y z qx qy qz qw gripper
            # the sim's clip holds the frame after every action; Prophet's frames come every apf actions
            group.handle.reanchor(replay.clips[-1][:, apf - 1::apf], state[:, :7], state[:, 7])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--world-model", type=Path, required=True, help="Prophet checkpoint")
    parser.add_argument("--sim", default="panda_sim/lift", help="ROBOT/TASK")
    parser.add_argument("--starts", type=int, default=20, help="sim seeds from %d" % FIRST_SEED)
    parser.add_argument("--rollouts", type=int, default=8, help="SDE rollouts per start")
    parser.add_argument("--config", default="", help="RL config JSON: chunks per rollout, chunk sampler, "
                        "imagination steps (default: RLConfig's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="the rows to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from prophrl_worldmodel.modeling_prophet import Prophet

    config = RLConfig.from_json_file(args.config) if args.config else RLConfig()
    robot, task = parse_sim(args.sim)
    policy = VLAPolicy.from_pretrained(args.policy).eval()
    prophet = Prophet.from_pretrained(args.world_model).eval().requires_grad_(False)
    horizon = policy.config.horizon
    starts = sim_starts(robot, task, args.starts, first_seed=FIRST_SEED)
    seeds = [derived_seed(args.seed, i) for i in range(args.starts)]
    settings = ImaginationSettings(config.chunks_per_rollout, config.chunk_sampler, early_termination=False)

    def imagination():
        return InProcessImagination(prophet, config.imagination_steps, config.shared_world_model_noise)

    def replay(camera_frames: bool = False):
        if camera_frames:
            return SimRollouts(robot, task, horizon)
        return SimRollouts(robot, task, horizon, image_size=REPLAY_IMAGE_SIZE, every_frame=False)

    @torch.no_grad()
    def small(frames: np.ndarray, vae: bool = False) -> np.ndarray:
        """Frames at Prophet's image size as Prophet reduces them, and through its VAE (encode, decode) if `vae`."""
        pixels = prophet._resized(torch.as_tensor(frames, dtype=torch.float32)[:, None], "frames", 5)
        if vae:
            pixels = prophet.decode_latents(prophet.encode_frames(pixels))
        return pixels[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()

    worlds = {"sim's own frames": lambda: SimRollouts(robot, task, horizon, every_frame=False),
              "Prophet's frames, replayed in the sim": lambda: DriftRecorded(imagination(), replay()),
              "Prophet's frames, the sim's pose (diagnosis)": lambda: TrueProprio(imagination(), replay()),
              "Prophet's frames, each chunk from the sim's (diagnosis)":
                  lambda: Reanchored(imagination(), replay(camera_frames=True)),
              "the sim's frames at Prophet's size (diagnosis)": lambda: SeenThrough(
                  SimRollouts(robot, task, horizon, every_frame=False), small),
              "the sim's frames through Prophet's VAE (diagnosis)": lambda: SeenThrough(
                  SimRollouts(robot, task, horizon, every_frame=False), lambda frames: small(frames, vae=True))}
    rows, figures = [], {}
    for key, (name, make) in zip(ROWS, worlds.items()):
        if key not in args.rows:
            continue
        backend = make()
        try:
            imagined = imagine(policy, backend, SimSuccessScorer(), starts, seeds, args.rollouts, "sde",
                               torch.Generator().manual_seed(args.seed), settings)
        finally:
            backend.shutdown()
        success = imagined.true_success
        per_start = success.mean(axis=1)
        interval = wilson_interval(int(success.sum()), success.size)
        starts_with_signal = float(((per_start > 0) & (per_start < 1)).mean())
        drift = ([float(np.concatenate(backend.drift[c]).mean()) for c in sorted(backend.drift)]
                 if isinstance(backend, DriftRecorded) else [])
        figures[name] = {"true_success": interval.estimate, "ci95": [interval.low, interval.high],
                         "starts_with_signal": starts_with_signal, "position_drift_m": drift}
        rows.append([name, f"{100 * interval.estimate:.1f}", f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]",
                     f"{starts_with_signal:.2f}", " ".join(f"{100 * d:.1f}" for d in drift) or "-"])
    print_table(f"{policy.config.name} policy, {args.starts} starts x {args.rollouts} SDE rollouts, "
                f"{config.chunks_per_rollout} chunks of {horizon} actions ({robot}/{task})",
                ["the policy sees", "true success %", "95 % CI", "starts with signal", "Prophet's pose drift, cm"],
                rows)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
