"""Supervised fine-tuning of the VLA policy on demonstrations (bags2dataset shards), flow-matching loss.

Targets: for the camera frame at step i of an episode, the chunk of the H actions executed from
that frame on, actions[i : i + H] (the dataset's per-frame executed actions; the camera runs at the
control rate). Past the episode's end the chunk is padded with zero motion and the last gripper
command. The proprio state is the end-effector pose (7) and the gripper command in force, i.e. the
previous step's gripper action (0 = open at the first frame), the same as the policy node reads
from the executor's gripper topic.

With imagined views (:func:`add_imagined_views`, ``SFTConfig.imagined_view_share``), a share of the samples
read the world model's view of their frame instead of the camera's (prophrl_trainer.imagined_views).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from prophrl_common.chunks import ACTION_SPACES, POLICY_STATE_DIM, POLICY_STATE_NAMES
from prophrl_common.devices import torch_device
from prophrl_common.config_io import ConfigError, require_finite_numbers
from prophrl_common.outputs import OutputKind, check_output_dir, check_writable_dir
from prophrl_data.shards import EpisodeDataset
from prophrl_nn.optimization import clipped_step, warmup_cosine
from prophrl_policy.configuration_vla import VLAConfig
from prophrl_policy.embodiment import Embodiment
from prophrl_policy.modeling_vla import CHECKPOINT_FILES, Observation, VLAPolicy, camera_view
from prophrl_policy.transforms import NormStats


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    only_successful: bool = True     # behaviour cloning from successful demonstrations
    max_pixel_shift: int = 4         # random-shift augmentation (DrQ-style), pixels at image_size
    imagined_view_share: float = 0.0  # share of the samples with an imagined view that read it (add_imagined_views)

    def __post_init__(self):
        require_finite_numbers(self, "SFT config")
        for key in ("steps", "batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"SFT config: {key} must be >= 1, got {getattr(self, key)}")
        if not (self.learning_rate > 0 and self.grad_clip > 0):
            raise ConfigError("SFT config: learning_rate and grad_clip must be positive")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.max_pixel_shift < 0:
            raise ConfigError("SFT config: weight_decay, warmup_steps and max_pixel_shift must be >= 0")
        if not 0 <= self.imagined_view_share <= 1:
            raise ConfigError(f"SFT config: imagined_view_share must be in [0, 1], got {self.imagined_view_share}")


# What `prophrl policy sft --out` writes: the policy checkpoint, sft.json and the default TensorBoard log.
SFT_OUTPUT = OutputKind("SFT policy checkpoint", CHECKPOINT_FILES | {"sft.json", "tensorboard"})


@dataclasses.dataclass
class DemoData:
    frames: np.ndarray         # (N, H, W, 3) uint8
    states: np.ndarray         # (N, 8) float32
    chunks: np.ndarray         # (N, horizon, 7) float32
    instructions: list[str]
    episode_index: np.ndarray  # (N,) int
    robot: str = ""            # the dataset's robot config name ("" unknown)
    control_period_s: float = 0.0
    sources: tuple[Path, ...] = ()  # the dataset directories the samples came from
    imagined: np.ndarray | None = None        # (N, S, S, 3) uint8: the world model's view of each frame
    imagined_valid: np.ndarray | None = None  # (N,) bool: which samples have one (add_imagined_views)
    imagined_from: str = ""                   # the world model that imagined them

    def embodiment(self) -> Embodiment | None:
        """What a policy trained on this data is for (None when the dataset does not say)."""
        if not self.robot or not self.control_period_s > 0:
            return None
        return Embodiment(self.robot, "ee_delta_7d", POLICY_STATE_NAMES, float(self.control_period_s))

    def __len__(self) -> int:
        return len(self.frames)


def policy_states(ee_pose: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(N, 8): ee pose and the gripper command in force (previous step's gripper action)."""
    gripper = np.concatenate([[0.0], actions[:-1, 6]]).astype(np.float32)
    return np.concatenate([ee_pose.astype(np.float32), gripper[:, None]], axis=1)


def target_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """(N, horizon, 7): actions[i : i + horizon], padded with zero motion and the last gripper value."""
    n = len(actions)
    pad = np.zeros((horizon, actions.shape[1]), np.float32)
    pad[:, 6] = actions[-1, 6]
    padded = np.concatenate([actions.astype(np.float32), pad])
    return np.stack([padded[i:i + horizon] for i in range(n)])


def load_demonstrations(dataset_dir: str | Path, horizon: int, only_successful: bool = True) -> DemoData:
    dataset_dir = Path(dataset_dir)
    dataset = EpisodeDataset(dataset_dir, "ee_delta_7d", needed_by="SFT")
    frames, states, chunks, instructions, episode_index = [], [], [], [], []
    for episode in dataset.episodes(("frames", "ee_pose", "actions"), known_outcome_for="SFT",
                                    only_successful=only_successful):
        actions = episode.actions
        frames.append(episode.frames)
        states.append(policy_states(episode.ee_pose, actions))
        chunks.append(target_chunks(actions, horizon))
        instructions += [episode.entry["instruction"]] * len(actions)
        episode_index.append(np.full(len(actions), episode.position))
    if not frames:
        raise ConfigError(f"{dataset_dir}: no {'successful ' if only_successful else ''}episodes to learn from")
    return DemoData(np.concatenate(frames), np.concatenate(states), np.concatenate(chunks), instructions,
                    np.concatenate(episode_index), robot=dataset.robot, control_period_s=dataset.control_period_s,
                    sources=(dataset_dir,))


def concatenate_demonstrations(parts: list[DemoData]) -> DemoData:
    """The samples of several datasets as one DemoData (each part's episodes keep distinct indices); they must be of
    one robot at one control rate."""
    robots = {(p.robot, p.control_period_s) for p in parts}
    if len(robots) > 1:
        raise ConfigError(f"these datasets are of different robots / control periods: {sorted(robots)}")
    offsets = np.cumsum([0] + [int(p.episode_index.max()) + 1 for p in parts[:-1]])
    return DemoData(np.concatenate([p.frames for p in parts]), np.concatenate([p.states for p in parts]),
                    np.concatenate([p.chunks for p in parts]), [t for p in parts for t in p.instructions],
                    np.concatenate([p.episode_index + o for p, o in zip(parts, offsets)]), robot=parts[0].robot,
                    control_period_s=parts[0].control_period_s, sources=tuple(s for p in parts for s in p.sources))


def add_imagined_views(data: DemoData, prophet, num_steps: int | None = None, seed: int = 0,
                       show_progress: bool = True, source: str = "") -> DemoData:
    """`data` (of one dataset directory, as load_demonstrations reads it) with `prophet`'s imagined view of every
    frame (imagined_views.imagine_views); its episodes must be the dataset's, step for step."""
    from prophrl_trainer.imagined_views import imagine_views
    from prophrl_worldmodel.clips import load_episodes

    if len(data.sources) != 1:
        raise ConfigError("imagined views are made for the demonstrations of one dataset directory")
    positions = list(dict.fromkeys(data.episode_index.tolist()))
    episodes = {e.position: e for e in load_episodes(data.sources[0], prophet.config.image_size)}
    missing = [p for p in positions if p not in episodes]
    if missing:
        raise ConfigError(f"{data.sources[0]}: episodes {missing[:5]} of the demonstrations are not in the dataset")
    views = dict(zip(positions, imagine_views(prophet, [episodes[p] for p in positions], num_steps, seed=seed,
                                              show_progress=show_progress)))
    size = prophet.config.image_size
    imagined, valid = np.zeros((len(data), size, size, 3), np.uint8), np.zeros(len(data), bool)
    for position, view in views.items():
        rows = np.flatnonzero(data.episode_index == position)
        if len(rows) != len(view.frames) or np.any(np.diff(rows) != 1):
            raise ConfigError(f"{data.sources[0]}: episode {position} has {len(view.frames)} frames at "
                              f"{size} px but {len(rows)} demonstration samples")
        imagined[rows], valid[rows] = view.frames, view.valid
    return dataclasses.replace(data, imagined=imagined, imagined_valid=valid, imagined_from=source)


def with_imagined_views(obs: Observation, data: DemoData, indices: torch.Tensor, share: float,
                        policy_config: VLAConfig, generator: torch.Generator) -> Observation:
    """`obs` with the images of a random `share` of the samples that have an imagined view replaced by it."""
    valid = torch.from_numpy(data.imagined_valid[indices.numpy()])
    use = valid & (torch.rand(len(indices), generator=generator) < share)
    if use.any():
        frames = torch.from_numpy(data.imagined[indices[use].numpy()]).to(obs.images.device)
        obs.images[use.to(obs.images.device)] = camera_view(frames, policy_config)
    return obs


class _DemoDataset(Dataset):
    def __init__(self, data: DemoData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return (torch.from_numpy(self.data.frames[i]), torch.from_numpy(self.data.states[i]),
                torch.from_numpy(self.data.chunks[i]), self.data.instructions[i], i)


def _collate(items):
    frames, states, chunks, instructions, indices = zip(*items)
    return torch.stack(frames), torch.stack(states), torch.stack(chunks), list(instructions), torch.tensor(indices)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by max_shift (replicate) and crop back at a random offset per image."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets.tolist())])


def train_sft(data: DemoData, policy_config: VLAConfig, cfg: SFTConfig, out_dir: str | Path,
              log_dir: str | Path | None = None, show_progress: bool = True,
              overwrite: bool = False, device: str = "cpu") -> tuple[Path, list[float]]:
    """Train, save the policy (safetensors + JSON + norm stats) to out_dir; return it and the loss curve.

    device: where the policy trains (cpu, cuda, cuda:N); the seeded random streams stay on the CPU, so a
    seed draws the same batches, shifts, noise and times on every device.

    out_dir is checked before training (prophrl_common.outputs: never the dataset, an existing directory only
    with ``overwrite`` and only a previous SFT output); a TensorBoard log inside it survives the save. A loss
    that becomes NaN / inf stops training (NonFiniteError) and nothing is saved.
    """
    from tqdm import tqdm

    check_output_dir(out_dir, SFT_OUTPUT, overwrite=overwrite, inputs=data.sources)
    if log_dir is not None:
        check_writable_dir(log_dir, inputs=data.sources, option="--log-dir")
    if policy_config.robot_action_dim != ACTION_SPACES["ee_delta_7d"] or policy_config.state_dim != POLICY_STATE_DIM:
        raise ConfigError(f"SFT on ee_delta_7d demonstrations needs robot_action_dim {ACTION_SPACES['ee_delta_7d']} "
                          f"and state_dim {POLICY_STATE_DIM}")
    imagined = cfg.imagined_view_share > 0
    if imagined and data.imagined is None:
        raise ConfigError("imagined_view_share > 0 needs demonstrations with imagined views (add_imagined_views)")
    target = torch_device(device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    stats = NormStats.from_data(data.states, data.chunks)
    policy = VLAPolicy(policy_config, stats, embodiment=data.embodiment()).to(target)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    loader = DataLoader(_DemoDataset(data), batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
                        collate_fn=_collate, generator=generator)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    losses: list[float] = []
    step, start = 0, time.time()
    policy.train()
    with tqdm(total=cfg.steps, desc="policy sft", unit="step", disable=not show_progress) as bar:
        while step < cfg.steps:
            for frames, states, chunks, instructions, indices in loader:
                obs = Observation.from_frames(frames, instructions, states, policy_config, device=target)
                if imagined:
                    obs = with_imagined_views(obs, data, indices, cfg.imagined_view_share, policy_config, generator)
                obs.images = random_shift(obs.images, cfg.max_pixel_shift, generator)
                loss = policy.compute_loss(obs, chunks, generator=generator)
                losses.append(clipped_step(loss, optimizer, schedule, params, cfg.grad_clip, "SFT", step))
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    recent = float(np.mean(losses[-cfg.log_every:]))
                    bar.set_postfix(loss=f"{recent:.4f}")
                    if writer is not None:
                        writer.add_scalar("sft/loss", recent, step)
                        writer.add_scalar("sft/lr", schedule.get_last_lr()[0], step)
                if step >= cfg.steps:
                    break
    if writer is not None:
        writer.add_scalar("sft/wall_time_s", time.time() - start, step)
        writer.close()
    path = policy.eval().save_pretrained(out_dir)
    record = {"sft_config": dataclasses.asdict(cfg), "num_samples": len(data),
              "final_loss": float(np.mean(losses[-cfg.log_every:]))}
    if imagined:
        record["imagined_views"] = {"world_model": data.imagined_from, "samples": int(data.imagined_valid.sum())}
    (Path(path) / "sft.json").write_text(json.dumps(record, indent=2))
    return Path(path), losses
