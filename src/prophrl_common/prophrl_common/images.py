"""sensor_msgs/Image <-> numpy, without cv_bridge.

Pure numpy (no ROS graph, no OpenCV). Produces the same arrays as ROS 2 ``cv_bridge``'s
``imgmsg_to_cv2(msg, "passthrough")`` for the supported encodings: (H, W) for one channel,
(H, W, C) otherwise, with the message's channel order kept (bgr8 stays BGR). Unlike cv_bridge,
no OpenCV is needed; the tests compare against cv_bridge whenever a ROS 2 one is importable.

Decoding honours ``step`` (row padding is ignored) and ``is_bigendian``; the returned array is
always a fresh, C-contiguous, native-byte-order copy, so later changes to ``msg.data`` never
show through it (and the message's ``array.array`` is not left with an exported buffer).
Encoding writes native, tightly packed data (``step = width * channels * itemsize``).
"""

from __future__ import annotations

import array as _array
import sys

import numpy as np
from sensor_msgs.msg import Image

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "8UC4": (np.dtype(np.uint8), 4),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)

_NATIVE_BIGENDIAN = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """An Image message or array that cannot be converted."""


def _encoding_info(encoding) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        ) from None


def _data_as_uint8(data) -> np.ndarray:
    """A flat uint8 view (or, for a list, a copy) of msg.data."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError(f"msg.data ndarray must be uint8, got {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, _array.array)):
        if isinstance(data, _array.array) and data.itemsize != 1:
            raise ImageConversionError(f"msg.data array.array must have typecode 'B', got {data.typecode!r}")
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageConversionError(f"msg.data of type {type(data).__name__} is not a byte sequence: {exc}") from None


def _strided_view(msg: Image) -> tuple[np.ndarray, str]:
    """Validate msg and return a zero-copy view (H, W, C) in the wire byte order.

    The view aliases msg.data: callers must copy before returning it.
    """
    encoding = msg.encoding
    dtype, channels = _encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*channels*itemsize = {width}*{channels}*{dtype.itemsize}"
            f" = {row_bytes} for {encoding}"
        )
    buf = _data_as_uint8(msg.data)
    if buf.size != height * step:
        raise ImageConversionError(
            f"data has {buf.size} bytes but height*step = {height}*{step} = {height * step}"
        )
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    shape = (height, width, channels)
    if buf.size == 0 or height == 0 or width == 0:
        return np.zeros(shape, dtype=dtype), encoding
    view = np.ndarray(
        shape=shape,
        dtype=dtype,
        buffer=buf,
        offset=0,
        strides=(step, channels * dtype.itemsize, dtype.itemsize),
    )
    return view, encoding


def _owned_copy(view: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous native-order copy (always a copy, never a view)."""
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C", copy=True)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode a sensor_msgs/Image into a fresh C-contiguous array.

    Shape (H, W) for single-channel encodings, (H, W, C) otherwise; dtype uint8, uint16 or
    float32 (native byte order). Raises ImageConversionError for unsupported encodings or
    inconsistent height/width/step/data sizes.
    """
    view, _ = _strided_view(msg)
    out = _owned_copy(view)
    if out.shape[2] == 1:
        out = out.reshape(out.shape[:2])
    return out


def to_rgb8(msg: Image) -> np.ndarray:
    """Decode an 8-bit colour or mono image to an (H, W, 3) uint8 RGB array.

    rgb8 is copied, bgr8/bgra8 are channel-swapped, rgba8/bgra8 lose alpha, mono8 is
    replicated to three channels. Other encodings (16-bit, float, and the generic 8UC* ones,
    whose channel order is unknown) raise ImageConversionError.
    """
    encoding = msg.encoding
    _encoding_info(encoding)  # unsupported encodings get the standard message
    if encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        raise ImageConversionError(
            f"to_rgb8 cannot convert encoding {encoding!r}; it needs one of rgb8, bgr8, rgba8, bgra8, mono8"
        )
    view, _ = _strided_view(msg)
    if encoding == "mono8":
        return np.repeat(view, 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        view = view[..., 2::-1]
    else:
        view = view[..., :3]
    return np.array(view, order="C", copy=True)


def _make_stamp(stamp):
    from builtin_interfaces.msg import Time

    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return Time(sec=stamp.sec, nanosec=stamp.nanosec)
    if hasattr(stamp, "to_msg"):  # rclpy.time.Time
        return stamp.to_msg()
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
    if isinstance(stamp, (int, float, np.integer, np.floating)):
        total_ns = int(round(float(stamp) * 1e9)) if isinstance(stamp, (float, np.floating)) else int(stamp) * 10**9
        sec, nanosec = divmod(total_ns, 10**9)
        return Time(sec=sec, nanosec=nanosec)
    raise ImageConversionError(
        f"stamp must be None, builtin_interfaces/Time, rclpy Time or seconds, got {type(stamp).__name__}"
    )


def numpy_to_image(array, encoding: str, stamp=None, frame_id: str = "") -> Image:
    """Encode an array as a tightly packed, native-byte-order sensor_msgs/Image.

    ``array`` must be a numpy array of the encoding's dtype (any byte order) with shape (H, W)
    for single-channel encodings ((H, W, 1) is also accepted) or (H, W, C) for C-channel ones.
    ``stamp`` may be None (zero), a builtin_interfaces/Time, an rclpy Time or float seconds.
    """
    dtype, channels = _encoding_info(encoding)
    if not isinstance(array, np.ndarray):
        raise ImageConversionError(f"expected a numpy array for {encoding}, got {type(array).__name__}")
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ImageConversionError(f"encoding {encoding} needs dtype {dtype.name}, got {array.dtype}")
    shape = array.shape
    if channels == 1:
        ok = len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)
        want = "(H, W) or (H, W, 1)"
    else:
        ok = len(shape) == 3 and shape[2] == channels
        want = f"(H, W, {channels})"
    if not ok:
        raise ImageConversionError(f"encoding {encoding} needs shape {want}, got {shape}")
    height, width = int(shape[0]), int(shape[1])

    native = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    data = _array.array("B")
    data.frombytes(native.tobytes())

    msg = Image()
    msg.header.stamp = _make_stamp(stamp)
    msg.header.frame_id = str(frame_id)
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 1 if (_NATIVE_BIGENDIAN and dtype.itemsize > 1) else 0
    msg.step = width * channels * dtype.itemsize
    msg.data = data  # array.array('B') is stored as-is (no per-element Python check)
    return msg


__all__ = [
    "ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "ImageConversionError",
    "image_to_numpy",
    "numpy_to_image",
    "to_rgb8",
]
