"""Does Prophet follow its actions? Train a tiny Prophet on a synthetic world and check.

The world: a bright square on a dark background. The action chunk's first-arm dpos (x, y) moves the
square by `speed` pixels per frame in image x / y; the history shows the square drifting in an
unrelated random direction, so only the actions tell where it goes next. After training, the model
predicts a clip from the same start frame for each of the four directions; a direction counts as
followed when the square's brightness centroid in the last predicted frame moved the right way along
the commanded axis by at least half the true displacement. Also prints PSNR/SSIM/flow agreement of
the predictions against the true clips, and train-step / generation timings.

    python bench/prophet_action_following.py [--image-size 32] [--vae-steps 300] [--steps 600] [--patch 1] [--threads 1]

Where the scene predicts the motion, as in demonstrations (the arm keeps going where it was going), a model
can learn the scene's prediction and ignore the actions; a policy that does something else is then imagined
doing what the demonstrations did. --predictable-share P makes the history drift the commanded way in a share P
of the training clips, and the evaluation then starts every direction from a history drifting right: the
actions must overrule the scene. --action-dropout trains with classifier-free guidance on the actions and
--guidance G [G ...] evaluates the same model at each guidance:

    python bench/prophet_action_following.py --threads 1 --predictable-share 0.9 --action-dropout 0.15 \
        --guidance 1 2 4
"""

from __future__ import annotations

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import argparse
import time

import cv2
import numpy as np
import torch

from prophrl_worldmodel.configuration_prophet import get_prophet_config
from prophrl_worldmodel.metrics import video_metrics
from prophrl_worldmodel.modeling_prophet import Prophet

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
ACTION_STEP_M = 0.01   # dpos per action step; its sign is the direction


class MovingSquareWorld:
    def __init__(self, config, square: int, speed: int, background: int = 30, rng_seed: int = 0,
                 predictable_share: float = 0.0):
        self.config, self.square, self.speed, self.background = config, square, speed, background
        self.predictable_share = predictable_share
        self.rng = np.random.default_rng(rng_seed)

    def frame(self, x: float, y: float) -> np.ndarray:
        size = self.config.image_size
        image = np.full((size, size, 3), self.background, np.uint8)
        x0, y0 = int(round(x)), int(round(y))
        image[y0:y0 + self.square, x0:x0 + self.square] = (240, 220, 60)
        return image

    def actions(self, direction) -> np.ndarray:
        chunk = np.zeros((self.config.action_horizon, 7), np.float32)
        chunk[:, 0], chunk[:, 1] = direction[0] * ACTION_STEP_M, direction[1] * ACTION_STEP_M
        return chunk

    def clip(self, start_xy, direction) -> np.ndarray:
        (x, y), (dx, dy) = start_xy, direction
        return np.stack([self.frame(x + dx * self.speed * k, y + dy * self.speed * k)
                         for k in range(1, self.config.frames_per_clip + 1)])

    def sample(self) -> dict:
        cfg, rng = self.config, self.rng
        reach = self.speed * max(cfg.frames_per_clip, cfg.history_length)
        x, y = rng.integers(reach, cfg.image_size - self.square - reach + 1, size=2)
        direction = list(DIRECTIONS.values())[rng.integers(4)]
        if rng.random() < self.predictable_share:
            drift = np.asarray(direction, np.float64) * self.speed     # the scene predicts the motion
        else:
            drift = rng.uniform(-1, 1, size=2) * self.speed
        return dict(history_frames=self.history((x, y), drift), current_frame=self.frame(x, y),
                    actions=self.actions(direction), future_frames=self.clip((x, y), direction))

    def history(self, start_xy, drift) -> np.ndarray:
        """The history frames, oldest first, of a square that drifted `drift` pixels per frame to start_xy."""
        (x, y), count = start_xy, self.config.history_length
        return np.stack([self.frame(x - drift[0] * k, y - drift[1] * k) for k in range(count, 0, -1)])

    def batch(self, size: int) -> dict:
        samples = [self.sample() for _ in range(size)]
        return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


def centroid(frame: np.ndarray) -> np.ndarray | None:
    """(x, y) of the square: brightness above the background (the median), None when nothing stands out."""
    gray = frame.astype(np.float64).mean(axis=-1)
    weight = np.clip(gray - np.median(gray) - 15, 0, None)
    if weight.sum() < 10.0:
        return None
    ys, xs = np.mgrid[: frame.shape[0], : frame.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def train(model: Prophet, world: MovingSquareWorld, vae_steps: int, steps: int, batch: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    vae_opt = torch.optim.AdamW(model.vae_parameters(), lr=2e-3)
    start = time.perf_counter()
    for _ in range(vae_steps):
        frames = world.batch(batch)["future_frames"]
        loss = model.vae_loss(frames, generator).loss
        vae_opt.zero_grad()
        loss.backward()
        vae_opt.step()
    vae_time = time.perf_counter() - start
    model.fit_latent_statistics(world.batch(32)["future_frames"])
    model.fit_action_statistics(world.batch(256)["actions"])
    opt = torch.optim.AdamW(model.denoiser_parameters(), lr=2e-3)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.training_loss(world.batch(batch), generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return dict(vae_s=vae_time, denoiser_s=time.perf_counter() - start, losses=losses)


def evaluate(model: Prophet, world: MovingSquareWorld, num_steps: int, seed: int, drift: str = "") -> dict:
    """Each direction commanded from the centre; with `drift` (a direction's name), from a history of the square
    drifting that way (no history otherwise)."""
    size = model.config.image_size
    start_xy = ((size - world.square) / 2,) * 2
    start = world.frame(*start_xy)
    names = list(DIRECTIONS)
    actions = np.stack([world.actions(DIRECTIONS[n]) for n in names])
    history = None
    if drift:
        history = np.repeat(world.history(start_xy, np.asarray(DIRECTIONS[drift]) * world.speed)[None], 4, 0)
    begin = time.perf_counter()
    clips = model.generate(np.repeat(start[None], 4, 0), history, actions, num_steps,
                           torch.Generator().manual_seed(seed)).numpy()
    generate_s = time.perf_counter() - begin
    expected = world.speed * model.config.frames_per_clip
    followed, moves, metrics = {}, {}, []
    for name, clip in zip(names, clips):
        end = centroid(clip[-1])
        if end is None:
            moves[name], followed[name] = "square vanished", False
        else:
            move = end - centroid(start)
            moves[name] = move.round(2).tolist()
            followed[name] = float(move @ np.array(DIRECTIONS[name])) >= 0.5 * expected
        truth = world.clip(start_xy, DIRECTIONS[name])
        metrics.append(video_metrics(np.concatenate([start[None], truth]), np.concatenate([start[None], clip])))
    return dict(followed=followed, moves=moves, generate_s=generate_s, metrics=metrics, start=start, clips=clips)


def clip_metrics(metrics: list) -> dict:
    """Mean PSNR / SSIM over the predicted frames and flow EPE / cosine over the four directions' clips."""
    return dict(psnr=np.mean([m.psnr[1:].mean() for m in metrics]),
                ssim=np.mean([m.ssim[1:].mean() for m in metrics]),
                epe=np.mean([np.nanmean(m.flow_epe) for m in metrics]),
                cos=np.mean([np.nanmean(m.flow_cos) for m in metrics]))


def save_grid(path: str, start: np.ndarray, clips: np.ndarray, scale: int = 4) -> None:
    """One row per direction: the start frame, then the predicted clip."""
    rows = [np.concatenate([start, *clip], axis=1) for clip in clips]
    grid = np.clip(np.concatenate(rows, axis=0), 0, 255).astype(np.uint8)
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--patch", type=int, default=1, help="spatial patch size of the transformer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=10, help="Euler steps at generation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-grid", default="", help="PNG of the start frame + predicted clip per direction")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default; 1 is far faster on a shared, busy CPU)")
    parser.add_argument("--predictable-share", type=float, default=0.0,
                        help="share of training clips whose history drifts the commanded way; > 0 also evaluates "
                             "from a history drifting right")
    parser.add_argument("--action-dropout", type=float, default=0.0, help="share of training clips without actions")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="action guidance(s) to evaluate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = get_prophet_config("tiny", image_size=args.image_size, frames_per_clip=4, actions_per_frame=2,
                                history_scales=((2, 1, 2, 2), (2, 2, 4, 4)), use_action_frames=False,
                                patch_size=(1, args.patch, args.patch), action_dropout=args.action_dropout)
    model = Prophet(config)
    world = MovingSquareWorld(config, square=max(4, args.image_size // 5), speed=max(1, args.image_size // 16),
                              rng_seed=args.seed, predictable_share=args.predictable_share)
    stats = train(model, world, args.vae_steps, args.steps, args.batch, args.seed)
    model.eval()
    drift = "right" if args.predictable_share > 0 else ""
    rows = []
    for guidance in args.guidance:
        model.configure_action_guidance(action_guidance=guidance)
        result = evaluate(model, world, args.num_steps, args.seed, drift)
        rows.append((guidance, result))
    losses = stats["losses"]
    print(f"VAE: {args.vae_steps} steps in {stats['vae_s']:.1f} s; denoiser: {args.steps} steps in "
          f"{stats['denoiser_s']:.1f} s ({stats['denoiser_s'] / max(args.steps, 1):.3f} s/step, batch {args.batch})")
    print(f"loss: first 10 mean {np.mean(losses[:10]):.3f}, last 10 mean {np.mean(losses[-10:]):.3f}")
    for guidance, result in rows:
        print(f"\naction guidance {guidance:g}" + (f", history drifting {drift}" if drift else "") +
              f": generate (4 clips, {args.num_steps} steps) {result['generate_s']:.2f} s")
        for name in DIRECTIONS:
            verdict = "followed" if result["followed"][name] else "NOT followed"
            print(f"  {name:5s} centroid moved {result['moves'][name]} -> {verdict}")
        m = result["summary"] = clip_metrics(result["metrics"])
        print(f"  vs. true clips: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, flow EPE {m['epe']:.2f} px, "
              f"flow cos {m['cos']:.2f}")
    print("\n| action guidance | directions followed | PSNR dB | flow cos |\n|---|---|---|---|")
    for guidance, result in rows:
        m = result["summary"]
        print(f"| {guidance:g} | {sum(result['followed'].values())}/4 | {m['psnr']:.2f} | {m['cos']:.2f} |")
    if args.save_grid:
        save_grid(args.save_grid, result["start"], result["clips"])


if __name__ == "__main__":
    main()
