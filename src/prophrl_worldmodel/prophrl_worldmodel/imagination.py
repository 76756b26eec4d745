"""Closed-loop imagination: a group of rollouts from one start, advanced chunk by chunk (no ROS).

The world model stands in for robot + camera. Each rollout keeps its own history buffer (start frame
and generated frames, as in ``Prophet.rollout``) and its own end-effector pose, integrated from the
executed ee_delta_7d actions the way the executor's delta control moves the arm. The integrated pose
is what the policy reads as proprio state in imagination, and what the action frames are rendered
from when the camera is calibrated.

    rollouts = ImaginedRollouts(prophet, ImaginationStart(context_frames, "lift the red cube", ee_pose),
                                num_rollouts=8, seed=0)
    while not done:
        chunks = policy(rollouts.current_frames, rollouts.states)   # (G, horizon, 7)
        clip = rollouts.step(chunks)                                # (G, F, S, S, 3) uint8
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.config_io import ConfigError
from prophrl_common.geometry import CameraCalibration, EndEffectorPose
from prophrl_worldmodel.action_frames import render_action_frames
from prophrl_worldmodel.modeling_prophet import Prophet


@dataclasses.dataclass(frozen=True)
class ImaginationStart:
    """Where a group of imagined rollouts begins."""

    context_frames: np.ndarray                # (T >= 1, H, W, 3) uint8, oldest first; the last is the start frame
    instruction: str = ""
    ee_pose: np.ndarray | None = None         # (7,) x y z qx qy qz qw in the robot base frame
    gripper: float = 0.0                      # gripper command in force (0 open .. 1 closed)
    calibration: CameraCalibration | None = None   # camera of context_frames; enables action frames

    def __post_init__(self):
        frames = np.asarray(self.context_frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3:
            raise ConfigError(f"context_frames must be (T >= 1, H, W, 3) RGB, got shape {np.shape(self.context_frames)}")
        object.__setattr__(self, "context_frames", frames)
        if self.ee_pose is not None:
            pose = np.asarray(self.ee_pose, np.float64).reshape(-1)
            if pose.shape != (7,) or not np.isfinite(pose).all() or np.linalg.norm(pose[3:]) < 1e-6:
                raise ConfigError(f"ee_pose must be 7 finite values (xyz + quaternion xyzw), got {pose.tolist()}")
            object.__setattr__(self, "ee_pose", pose)
        if not np.isfinite(self.gripper):
            raise ConfigError("gripper must be finite")


def pose_to_vector(pose: EndEffectorPose) -> np.ndarray:
    """(7,) x y z qx qy qz qw."""
    quaternion = Rotation.from_matrix(pose.rotation_matrix).as_quat()
    return np.concatenate([pose.position, quaternion]).astype(np.float32)


class ImaginedRollouts:
    """G rollouts of one world model from one start, stepped one action chunk at a time."""

    def __init__(self, model: Prophet, start: ImaginationStart, num_rollouts: int, *, num_steps: int | None = None,
                 seed: int = 0, keep_frames: bool = True, shared_noise: bool = False):
        """keep_frames=False: `frames` stays empty (a live, unbounded run keeps only what the model needs).
        shared_noise: the G rollouts draw the same world-model noise at every chunk (common random numbers), so
        they differ only where their actions differ."""
        if num_rollouts < 1:
            raise ConfigError(f"num_rollouts must be >= 1, got {num_rollouts}")
        self.model, self.start, self.num_rollouts, self.num_steps = model, start, int(num_rollouts), num_steps
        self.shared_noise = bool(shared_noise)
        config = model.config
        self.horizon = config.action_horizon
        self.generator = torch.Generator(device=model.device).manual_seed(int(seed))
        size = config.image_size
        frames = torch.as_tensor(start.context_frames, dtype=torch.float32, device=model.device)
        frames = model._resized(frames[None], "context_frames", 5)[0]          # (T, S, S, 3) floats in [0, 255]
        self._start = frames[-1:].expand(self.num_rollouts, -1, -1, -1).clone()
        self._history = frames[:-1][None].expand(self.num_rollouts, -1, -1, -1, -1)[:, -config.history_length:].clone()
        self._poses: list[EndEffectorPose] | None = None
        if start.ee_pose is not None:
            pose = EndEffectorPose.from_quaternion(start.ee_pose[:3], start.ee_pose[3:], start.gripper)
            self._poses = [pose] * self.num_rollouts
        self._calibration = start.calibration.resized(size, size) if start.calibration is not None else None
        self._clips: list[np.ndarray] = []
        self._keep_frames = keep_frames
        self.chunks_done = 0
        self._size = size

    # ----- what the policy observes ---------------------------------------------------------------
    @property
    def current_frames(self) -> np.ndarray:
        """(G, S, S, 3) uint8: each rollout's latest frame (the start frame before the first step)."""
        return _to_uint8(self._start)

    @property
    def ee_poses(self) -> np.ndarray | None:
        """(G, 7) integrated end-effector poses, or None when the start had no pose."""
        if self._poses is None:
            return None
        return np.stack([pose_to_vector(p) for p in self._poses])

    @property
    def grippers(self) -> np.ndarray:
        """(G,) gripper command in force per rollout."""
        if self._poses is None:
            return np.full(self.num_rollouts, self.start.gripper, np.float32)
        return np.array([p.gripper for p in self._poses], np.float32)

    @property
    def frames(self) -> np.ndarray:
        """(G, N * F, S, S, 3) uint8: every frame generated so far."""
        if not self._clips:
            return np.zeros((self.num_rollouts, 0, self._size, self._size, 3), np.uint8)
        return np.concatenate(self._clips, axis=1)

    # ----- stepping -------------------------------------------------------------------------------
    def step(self, chunks) -> np.ndarray:
        """Execute one action chunk per rollout: (G, horizon, 7 or 14) -> the imagined clip (G, F, S, S, 3) uint8."""
        return step_together([self], [chunks])[0]

    def reanchor(self, observed_clip, ee_poses=None, grippers=None) -> None:
        """Continue from what was observed instead of what was imagined: the last step's clip in each rollout's
        history buffer becomes `observed_clip` (G, F, H, W, 3) uint8 at any size (the frames the camera gave for
        that chunk), and the integrated poses become ee_poses (G, 7) and grippers (G,) where given. The next step
        is then one chunk ahead of the observations (model-predictive imagination). `frames` keeps what was
        imagined."""
        if self.chunks_done < 1:
            raise ConfigError("reanchor replaces the last imagined clip: step at least once first")
        frames_per_clip = self.model.config.frames_per_clip
        observed = np.asarray(observed_clip)
        if observed.ndim != 5 or observed.shape[:2] != (self.num_rollouts, frames_per_clip) or observed.shape[-1] != 3:
            raise ConfigError(f"observed_clip must be ({self.num_rollouts}, {frames_per_clip}, H, W, 3), "
                              f"got {observed.shape}")
        poses = None
        if ee_poses is not None:
            vectors = np.asarray(ee_poses, np.float64)
            gripper = (np.asarray(grippers, np.float64) if grippers is not None
                       else np.array(self.grippers, np.float64))
            if vectors.shape != (self.num_rollouts, 7) or gripper.shape != (self.num_rollouts,) \
                    or not (np.isfinite(vectors).all() and np.isfinite(gripper).all()):
                raise ConfigError(f"ee_poses must be ({self.num_rollouts}, 7) and grippers ({self.num_rollouts},), "
                                  "all finite")
            poses = [EndEffectorPose.from_quaternion(v[:3], v[3:], float(g)) for v, g in zip(vectors, gripper)]
        elif grippers is not None:
            raise ConfigError("grippers need ee_poses")
        clip = torch.as_tensor(observed, dtype=torch.float32, device=self.model.device)
        clip = self.model._resized(clip, "observed_clip", 5)
        # after a step the buffer ends with the clip's first F - 1 frames, and the start frame is its last
        kept = self._history[:, :max(self._history.shape[1] - (frames_per_clip - 1), 0)]
        self._history = torch.cat([kept, clip[:, :-1]], dim=1)[:, -self.model.config.history_length:]
        self._start = clip[:, -1]
        if poses is not None:
            self._poses = poses

    def _inputs(self, chunks) -> dict:
        """The checked chunks and action-frame inputs of this group's next clip (ConfigError for bad chunks)."""
        chunks = np.asarray(chunks, np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != self.num_rollouts or chunks.shape[1] != self.horizon \
                or chunks.shape[2] % ARM_ACTION_DIM:
            raise ConfigError(f"chunks must be ({self.num_rollouts}, {self.horizon}, 7 per arm), got {chunks.shape}")
        if not np.isfinite(chunks).all():
            raise ConfigError("chunks contain NaN or inf")
        config = self.model.config
        action_frames = calibrated = None
        if config.use_action_frames:
            if self._calibration is not None and self._poses is not None:
                action_frames = np.stack([render_action_frames(self._calibration, [pose], chunk[:, :ARM_ACTION_DIM],
                                                               config.actions_per_frame)
                                          for pose, chunk in zip(self._poses, chunks)])
                calibrated = np.ones(self.num_rollouts, np.float32)
            else:
                action_frames = np.zeros((self.num_rollouts, config.frames_per_clip, self._size, self._size, 3),
                                         np.uint8)
                calibrated = np.zeros(self.num_rollouts, np.float32)
        return {"chunks": chunks, "action_frames": action_frames, "calibrated": calibrated}

    def _noise(self) -> torch.Tensor:
        """The next clip's initial noise from this group's own generator: a group samples the same clip alone
        or batched with others."""
        return self.model.initial_noise(self.num_rollouts, self.generator, self.shared_noise)

    def _advance(self, chunks: np.ndarray, clip: torch.Tensor) -> np.ndarray:
        """Take `clip` (G, F, S, S, 3) floats as this group's next clip: history, start frame and poses move on."""
        self._history = torch.cat([self._history, self._start[:, None], clip[:, :-1]],
                                  dim=1)[:, -self.model.config.history_length:]
        self._start = clip[:, -1]
        if self._poses is not None:
            self._poses = [_integrate(pose, chunk[:, :ARM_ACTION_DIM]) for pose, chunk in zip(self._poses, chunks)]
        clip_uint8 = _to_uint8(clip)
        if self._keep_frames:
            self._clips.append(clip_uint8)
        self.chunks_done += 1
        return clip_uint8


def step_together(groups: list[ImaginedRollouts], chunks: list) -> list[np.ndarray]:
    """`groups[i].step(chunks[i])` for every i, with one Prophet call per set of groups whose history buffers
    are equally long (all of them in RL, where every group starts alike). Each group draws its noise from its
    own generator, so it imagines what it would alone, up to float rounding of the larger batch. Bad chunks in
    any group raise ConfigError before any group advances. Fewer, larger calls pay where a call costs more
    than its rollouts (an accelerator); on a CPU the tiny Prophet's time grows with the batch (1.05 s for 8
    rollouts, 2.1 s for 16, 10 Euler steps, one thread)."""
    if len(groups) != len(chunks):
        raise ValueError(f"{len(groups)} groups but {len(chunks)} chunk arrays")
    if len({id(group.model) for group in groups}) > 1 or len({group.num_steps for group in groups}) > 1:
        raise ValueError("groups stepped together must share one world model and number of steps")
    inputs = [group._inputs(chunk) for group, chunk in zip(groups, chunks, strict=True)]
    for group, given in zip(groups, inputs):
        given["noise"] = group._noise()
    clips: list[np.ndarray | None] = [None] * len(groups)
    by_history: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        by_history.setdefault(group._history.shape[1], []).append(i)
    for members in by_history.values():
        model = groups[members[0]].model
        with_frames = inputs[members[0]]["action_frames"] is not None

        def joined(key, members=members):
            return np.concatenate([inputs[i][key] for i in members]) if with_frames else None

        clip = model.generate(torch.cat([groups[i]._start for i in members]),
                              torch.cat([groups[i]._history for i in members]),
                              torch.from_numpy(np.concatenate([inputs[i]["chunks"] for i in members])),
                              groups[members[0]].num_steps, action_frames=joined("action_frames"),
                              calibrated=joined("calibrated"), noise=torch.cat([inputs[i]["noise"] for i in members]))
        first = 0
        for i in members:
            size = groups[i].num_rollouts
            clips[i] = groups[i]._advance(inputs[i]["chunks"], clip[first:first + size])
            first += size
    return clips


def _integrate(pose: EndEffectorPose, actions: np.ndarray) -> EndEffectorPose:
    for action in actions:
        pose = pose.apply_action(action)
    return pose


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return frames.detach().round().clamp(0, 255).to(torch.uint8).cpu().numpy()
