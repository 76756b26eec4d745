"""The LeRobot v3.0 dataset format: its layout, its statistics and a writer (pyarrow + PyAV, no ``lerobot``).

``lerobot`` cannot be imported here (it needs torchvision and Python >= 3.12), so the format is written
with pyarrow + PyAV following lerobot 0.6.1's own writer (``datasets/dataset_writer.py``,
``dataset_metadata.py``, ``compute_stats.py``, ``utils.py``, ``video_utils.py``, ``configs/video.py``)::

    meta/info.json                 codebase_version "v3.0", fps, features (with the default timestamp /
                                   frame_index / episode_index / index / task_index), totals, splits,
                                   chunks_size 1000, data_files_size_in_mb 100, video_files_size_in_mb 200,
                                   data_path / video_path templates; a video feature's "info" holds the
                                   stream's video.* keys, the encoder's (video.g / crf / preset /
                                   fast_decode / video_backend / extra_options), has_audio and
                                   is_depth_map (not the legacy "video.is_depth_map")
    meta/stats.json                per feature min / max / mean / std / count / q01 / q10 / q50 / q90 / q99
    meta/tasks.parquet             task_index, indexed by task (pandas index metadata)
    meta/episodes/chunk-000/file-000.parquet
                                   one row per episode: episode_index, tasks, length, data/*, videos/<key>/*,
                                   dataset_from_index / dataset_to_index, meta/episodes/*, stats/<feature>/<stat>,
                                   and this project's own columns (EPISODE_COLUMNS)
    data/chunk-000/file-000.parquet    one row per frame
    videos/<key>/chunk-000/file-000.mp4   every episode back to back

Statistics are computed as lerobot's ``compute_episode_stats``: per episode, over frames, with quantiles
from a 5000-bin histogram interpolated within the bin (its ``RunningQuantileStats``), mean / std from the
mean and mean of squares in float32 (float64 for integer columns); images per channel in [0, 1] with shape
(3, 1, 1) over lerobot's sample of frames (``sample_indices``), computed from each channel's 256 value counts
(the same histogram and quantiles; mean / std in float64, so they differ from lerobot's float32 sums only
in the last digits, about 6.6x faster: 116 vs 773 ms for a 300-frame 128 px episode); fewer than two values
give quantiles equal to the mean. Episodes are aggregated count-weighted (mean, pooled variance, quantiles), min / max overall.
Frame timestamps are frame_index / fps, the convention LeRobot's video decoding relies on. This writer puts
everything in file 000 (LeRobot's size-based rollover only matters when LeRobot appends to a dataset);
:mod:`prophrl_data.lerobot_import` reads any chunk / file layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
QUANTILE_BINS = 5000
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
# Episode columns this project adds to meta/episodes (LeRobot keeps unknown columns): what bags2dataset
# knows about an episode beyond LeRobot's fields. camera_calibration is the index.json "camera" entry as JSON.
EPISODE_COLUMNS = ("success", "episode_id", "task_name", "control_period_s", "camera_calibration")


@dataclasses.dataclass(frozen=True)
class VideoEncoder:
    """A PyAV encoder as LeRobot's VideoEncoderConfig describes it (the info.json video.* encoder keys)."""

    codec: str
    pix_fmt: str = "yuv420p"
    g: int = 2
    crf: int = 30
    preset: int | None = None

    def options(self) -> dict[str, str]:
        options = {"g": str(self.g), "crf": str(self.crf)}
        if self.preset is not None:
            options["preset"] = str(self.preset)
        if self.codec == "libsvtav1":
            options["svtav1-params"] = "fast-decode=0"
        return options

    def info(self) -> dict:
        return {"video.g": self.g, "video.crf": self.crf, "video.preset": self.preset, "video.fast_decode": 0,
                "video.video_backend": "pyav", "video.extra_options": {}}


# LeRobot's default (libsvtav1, yuv420p, GOP 2, CRF 30, preset 12), H.264, and a lossless RGB H.264 whose
# frames decode bit-exact (for round trips).
VIDEO_ENCODERS = {
    "libsvtav1": VideoEncoder("libsvtav1", preset=12),
    "h264": VideoEncoder("h264"),
    "libx264": VideoEncoder("libx264"),
    "libx264rgb": VideoEncoder("libx264rgb", pix_fmt="rgb24", crf=0),
}
DEFAULT_VIDEO_CODEC = "libsvtav1"


# ----- statistics ----------------------------------------------------------------------------------------
def _histogram_quantiles(column: np.ndarray, low, high, weights: np.ndarray | None = None) -> list[float]:
    """QUANTILES of one column (of values, or of distinct values with their `weights` = counts) from a
    QUANTILE_BINS histogram over [low, high], interpolated within a bin."""
    edges = np.linspace(low - 1e-10, high + 1e-10, QUANTILE_BINS + 1)
    counts = np.cumsum(np.histogram(column, bins=edges, weights=weights)[0])
    total = counts[-1]
    values = []
    for q in QUANTILES:
        target = q * total
        i = int(np.searchsorted(counts, target))
        if i == 0:
            values.append(edges[0])
        elif i >= len(counts):
            values.append(edges[-1])
        else:
            in_bin = counts[i] - counts[i - 1]
            values.append(edges[i] if in_bin == 0 else edges[i] + (target - counts[i - 1]) / in_bin
                          * (edges[i + 1] - edges[i]))
    return values


def _uint8_stats(values: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """vector_stats of (N, D) uint8 values from each column's 256-bin value counts (the same numbers, without
    a pass of float arithmetic and histogramming over every pixel)."""
    levels = np.arange(256, dtype=np.float64)
    out: dict[str, list] = {key: [] for key in ("min", "max", "mean", "std", *QUANTILE_KEYS)}
    for column in values.T:
        weights = np.bincount(column, minlength=256).astype(np.float64)
        present = np.flatnonzero(weights)
        low, high = np.float32(present[0]), np.float32(present[-1])
        mean = (levels * weights).sum() / len(column)
        std = np.sqrt(max(0.0, (levels ** 2 * weights).sum() / len(column) - mean ** 2))
        for key, value in zip(("min", "max", "mean", "std"), (low, high, mean, std)):
            out[key].append(value)
        for key, value in zip(QUANTILE_KEYS, _histogram_quantiles(levels[present], low, high, weights[present])):
            out[key].append(value)
    return {**{key: np.asarray(value, np.float32 if key in ("min", "max") else np.float64)
               for key, value in out.items()}, "count": np.array([count])}


def vector_stats(values: np.ndarray, count: int | None = None) -> dict[str, np.ndarray]:
    """Stats of (N, D) values over the N rows (see the module docstring); count defaults to N."""
    values = values.reshape(len(values), -1)
    if values.dtype == np.uint8 and len(values) >= 2:
        return _uint8_stats(values, len(values) if count is None else count)
    values = values.astype(np.result_type(values.dtype, np.float32), copy=False)
    count = len(values) if count is None else count
    if len(values) < 2:
        mean = values.mean(axis=0)
        stats = {"min": values.min(axis=0), "max": values.max(axis=0), "mean": mean, "std": values.std(axis=0)}
        return {**stats, "count": np.array([count]), **{key: mean.copy() for key in QUANTILE_KEYS}}
    low, high = values.min(axis=0), values.max(axis=0)
    mean = values.mean(axis=0)
    std = np.sqrt(np.maximum(0, (values ** 2).mean(axis=0) - mean ** 2))
    quantiles = np.array([_histogram_quantiles(values[:, d], low[d], high[d]) for d in range(values.shape[1])])
    return {"min": low, "max": high, "mean": mean, "std": std, "count": np.array([count]),
            **{key: quantiles[:, k] for k, key in enumerate(QUANTILE_KEYS)}}


def column_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of one data column: (N,) values give shape (1,) stats, (N, D) values shape (D,)."""
    return vector_stats(values.reshape(len(values), -1))


def sample_indices(length: int) -> np.ndarray:
    """The frames LeRobot samples for image statistics: evenly spaced, at least 100 (or all), at most 10 000,
    about length ** 0.75."""
    minimum = min(100, length)
    count = max(minimum, min(int(length ** 0.75), 10_000))
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1] with shape (3, 1, 1) of (N, H, W, 3) uint8 frames (LeRobot's sample,
    frames of 300 px or more downsampled as LeRobot does)."""
    picked = frames[sample_indices(len(frames))]
    height, width = picked.shape[1:3]
    if max(height, width) >= 300:
        step = int(width / 150) if width > height else int(height / 150)
        picked = picked[:, ::step, ::step]
    stats = vector_stats(picked.reshape(-1, picked.shape[-1]), count=len(picked))
    return {key: value if key == "count" else value.reshape(-1, 1, 1) / 255.0 for key, value in stats.items()}


def aggregate_stats(per_episode: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's stats over episodes: count-weighted mean, pooled variance and quantiles; min / max."""
    counts = np.stack([s["count"] for s in per_episode]).astype(np.float64)
    total = counts.sum(axis=0)
    means = np.stack([s["mean"] for s in per_episode])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * weights).sum(axis=0) / total
    variance = ((np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
    out = {"min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
           "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
           "mean": mean, "std": np.sqrt(variance), "count": total.astype(np.int64)}
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([s[key] for s in per_episode]) * weights).sum(axis=0) / total
    return out


# ----- writing -------------------------------------------------------------------------------------------
def _fixed_size_lists(values: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


@contextlib.contextmanager
def keep_scheduling_policy():
    """Undo any change of this thread's CPU scheduling policy made inside the block.

    SVT-AV1 (LeRobot's default video codec), when run as root, switches the calling thread to
    SCHED_FIFO priority 99. Every process started from that thread afterwards inherits real-time
    priority: on a small machine a busy node then starves everything else (DDS threads included),
    which looks like a hang. Nothing here should ever run real time, so the policy is put back.
    """
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def tasks_table(tasks: Sequence[str]):
    """meta/tasks.parquet: task_index indexed by task, with the pandas index metadata LeRobot's
    pd.read_parquet needs to look tasks up by name."""
    import pyarrow as pa

    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(list(tasks), pa.string())})
    pandas_metadata = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_metadata).encode()})


def stats_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {feature: {key: np.asarray(value).tolist() for key, value in feature_stats.items()}
            for feature, feature_stats in stats.items()}


class LeRobotV3Writer:
    """Streams episodes into one LeRobot v3.0 dataset directory (see the module docstring).

    Features: ``observation.state`` (state_names), ``action`` (action_names) and one RGB video
    ``observation.images.<camera_name>``; each episode has one task (its instruction).
    """

    def __init__(self, root: Path, *, fps: int, robot_type: str, camera_name: str, image_shape: tuple[int, ...],
                 state_names: Sequence[str], action_names: Sequence[str], video_codec: str = DEFAULT_VIDEO_CODEC):
        import av

        height, width = image_shape[:2]
        encoder = VIDEO_ENCODERS.get(video_codec)
        if encoder is None:
            raise ValueError(f"video codec {video_codec!r} is not one of {sorted(VIDEO_ENCODERS)}")
        if encoder.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"LeRobot video export needs an even image size (yuv420p), got {width}x{height}")
        self.root = Path(root)
        self.fps = fps
        self.robot_type = robot_type
        self.video_key = f"observation.images.{camera_name}"
        self.image_shape = tuple(image_shape)
        self.state_names = list(state_names)
        self.action_names = list(action_names)
        self.encoder = encoder
        self._video_path = self.root / VIDEO_PATH.format(video_key=self.video_key, chunk_index=0, file_index=0)
        self._video_path.parent.mkdir(parents=True)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 otherwise prints its whole configuration per file
        with keep_scheduling_policy():
            self._container = av.open(str(self._video_path), "w")
            self._stream = self._container.add_stream(encoder.codec, rate=fps, options=encoder.options())
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, encoder.pix_fmt
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name in (
            "observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index")}
        self._episodes: list[dict] = []
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._tasks: dict[str, int] = {}
        self._total_frames = 0

    def add_episode(self, frames: np.ndarray, state: np.ndarray, actions: np.ndarray, task: str,
                    columns: dict | None = None) -> None:
        """One episode: (N, H, W, 3) uint8 frames, (N, S) state, (N, A) actions, its task, and this project's
        extra episode columns (EPISODE_COLUMNS)."""
        import av

        episode_index, length, first = len(self._episodes), len(frames), self._total_frames
        task_index = self._tasks.setdefault(task, len(self._tasks))
        with keep_scheduling_policy():
            for offset, frame in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts, video_frame.time_base = first + offset, Fraction(1, self.fps)
                for packet in self._stream.encode(video_frame):
                    self._container.mux(packet)
        frame_index = np.arange(length, dtype=np.int64)
        data = {
            "observation.state": np.asarray(state, np.float32),
            "action": np.asarray(actions, np.float32),
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": first + frame_index,
            "task_index": np.full(length, task_index, dtype=np.int64),
        }
        for name, values in data.items():
            self._columns[name].append(values)
        stats = {name: column_stats(values) for name, values in data.items()}
        stats[self.video_key] = image_stats(frames)
        self._episode_stats.append(stats)
        self._episodes.append({
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": 0, "data/file_index": 0,
            "dataset_from_index": first, "dataset_to_index": first + length,
            f"videos/{self.video_key}/chunk_index": 0, f"videos/{self.video_key}/file_index": 0,
            f"videos/{self.video_key}/from_timestamp": first / self.fps,
            f"videos/{self.video_key}/to_timestamp": (first + length) / self.fps,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            **{f"stats/{feature}/{key}": value.tolist()
               for feature, feature_stats in stats.items() for key, value in feature_stats.items()},
            **(columns or {}),
        })
        self._total_frames += length

    def close(self) -> None:
        """Finish the video and write the data, episode, task, stats and info files."""
        import pyarrow as pa

        self._finish_video()
        data = {name: np.concatenate(parts) for name, parts in self._columns.items()}
        table = pa.table({name: _fixed_size_lists(values) if values.ndim == 2 else pa.array(values)
                          for name, values in data.items()})
        self._write_parquet(table, DATA_PATH.format(chunk_index=0, file_index=0))
        self._write_parquet(pa.Table.from_pylist(self._episodes), EPISODES_PATH.format(chunk_index=0, file_index=0))
        self._write_parquet(tasks_table(list(self._tasks)), TASKS_PATH)
        stats = {feature: aggregate_stats([s[feature] for s in self._episode_stats])
                 for feature in self._episode_stats[0]}
        self._write_json(STATS_PATH, stats_json(stats))
        self._write_json(INFO_PATH, self._info())

    def abort(self) -> None:
        """Release the encoder, best effort: the caller discards the directory anyway."""
        with contextlib.suppress(Exception):
            self._finish_video()

    def _finish_video(self) -> None:
        with keep_scheduling_policy():
            for packet in self._stream.encode():  # drain the encoder (SVT-AV1 complains when closed without it)
                self._container.mux(packet)
            self._container.close()

    def _info(self) -> dict:
        height, width, channels = self.image_shape
        video_info = {
            "video.height": height, "video.width": width,
            "video.codec": self._stream.codec_context.codec.canonical_name, "video.pix_fmt": self.encoder.pix_fmt,
            "video.fps": self.fps, "video.channels": channels, "has_audio": False,
            **self.encoder.info(), "is_depth_map": False,
        }
        features = {
            "observation.state": {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names},
            "action": {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names},
            self.video_key: {"dtype": "video", "shape": [height, width, channels],
                             "names": ["height", "width", "channels"], "info": video_info},
            **DEFAULT_FEATURES,
        }
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
        }

    def _write_parquet(self, table, relative: str) -> None:
        import pyarrow.parquet as pq

        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _write_json(self, relative: str, content: dict) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=4))
