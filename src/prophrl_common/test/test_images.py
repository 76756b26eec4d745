"""Tests for prophrl_common.images (no ROS graph needed)."""

from __future__ import annotations

import array
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from prophrl_common.images import (
    ENCODINGS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    image_to_numpy,
    numpy_to_image,
    to_rgb8,
)

# ---------------------------------------------------------------------------------------------
# Independent reference: per-pixel struct decoding, written from the sensor_msgs/Image spec.
# ---------------------------------------------------------------------------------------------

# encoding -> (struct code of the raw unsigned word, element size, channels, numpy dtype)
REF = {
    "rgb8": ("B", 1, 3, np.uint8),
    "bgr8": ("B", 1, 3, np.uint8),
    "rgba8": ("B", 1, 4, np.uint8),
    "bgra8": ("B", 1, 4, np.uint8),
    "mono8": ("B", 1, 1, np.uint8),
    "8UC1": ("B", 1, 1, np.uint8),
    "8UC3": ("B", 1, 3, np.uint8),
    "8UC4": ("B", 1, 4, np.uint8),
    "mono16": ("H", 2, 1, np.uint16),
    "16UC1": ("H", 2, 1, np.uint16),
    "32FC1": ("I", 4, 1, np.float32),  # decoded as raw bits, then viewed as float32
}
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32}
REQUIRED = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC1", "8UC3"]


def ref_decode(msg) -> np.ndarray:
    code, size, channels, dtype = REF[msg.encoding]
    raw = bytes(msg.data)
    endian = ">" if msg.is_bigendian else "<"
    rows = []
    for r in range(msg.height):
        row = []
        for c in range(msg.width):
            px = [
                struct.unpack_from(endian + code, raw, r * msg.step + (c * channels + ch) * size)[0]
                for ch in range(channels)
            ]
            row.append(px)
        rows.append(row)
    bits = np.array(rows, dtype=UINT_OF_SIZE[size]).reshape(msg.height, msg.width, channels)
    out = bits.view(dtype)
    return out.reshape(msg.height, msg.width) if channels == 1 else out


def bits(a: np.ndarray) -> np.ndarray:
    """Bit pattern of an array (so NaN payloads and -0.0 compare exactly)."""
    return np.ascontiguousarray(a).view(UINT_OF_SIZE[a.dtype.itemsize])


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert actual.dtype.isnative
    assert actual.flags.c_contiguous
    np.testing.assert_array_equal(bits(actual), bits(expected))


def _ros2_cv_bridge():
    """A ROS 2 CvBridge instance, or None here (the PyPI cv-bridge is ROS 1 and broken)."""
    try:
        from cv_bridge import CvBridge

        if not hasattr(CvBridge, "imgmsg_to_cv2"):
            return None
        return CvBridge()
    except Exception:  # noqa: BLE001 - any import/initialisation failure means "not available"
        return None


CV_BRIDGE = _ros2_cv_bridge()


def check_against_references(msg) -> np.ndarray:
    """Decode msg and compare with the struct reference (always) and cv_bridge (if importable)."""
    out = image_to_numpy(msg)
    assert_same(out, ref_decode(msg))
    _, size, channels, _ = REF[msg.encoding]
    # ROS 2 cv_bridge only handles rows that are a whole number of pixels (it reshapes by
    # step // (itemsize * channels)), and its big-endian path uses ndarray.newbyteorder, gone in
    # numpy 2, so compare only where it is specified to work.
    comparable = (
        msg.height > 0 and msg.width > 0 and msg.step % (size * channels) == 0 and not msg.is_bigendian
    )
    if CV_BRIDGE is not None and isinstance(msg, Image) and comparable:
        expected = np.asarray(CV_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        np.testing.assert_array_equal(bits(out), bits(expected.astype(out.dtype)))
    return out


def random_array(rng, encoding, height, width) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        a = rng.normal(scale=100.0, size=shape).astype(np.float32)
        flat = a.reshape(-1)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40], dtype=np.float32)
        flat[: min(flat.size, specials.size)] = specials[: flat.size]
        return a
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


def make_msg(encoding, height, width, step, payload: bytes, bigendian=False, data_type=array.array):
    """Hand-built message (bypasses numpy_to_image). data_type picks how msg.data is stored."""
    if data_type is array.array:
        msg = Image()
        msg.height, msg.width, msg.step = height, width, step
        msg.encoding = encoding
        msg.is_bigendian = int(bigendian)
        msg.data = array.array("B", payload)
        return msg
    # rclpy's setter would turn anything into array.array; a duck-typed message keeps the type.
    return SimpleNamespace(
        height=height, width=width, step=step, encoding=encoding,
        is_bigendian=int(bigendian), data=data_type(payload),
    )


def pack_rows(array_: np.ndarray, encoding, step, rng, bigendian=False) -> bytes:
    """Pack an (H, W[, C]) array into rows of `step` bytes with random garbage padding."""
    dtype, channels = ENCODINGS[encoding]
    wire = array_.astype(dtype.newbyteorder(">" if bigendian else "<"))
    height = array_.shape[0]
    row_bytes = array_.shape[1] * channels * dtype.itemsize
    out = bytearray()
    for r in range(height):
        out += wire[r].tobytes()
        out += rng.integers(0, 256, size=step - row_bytes, dtype=np.uint8).tobytes()
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_required_encodings_supported():
    for enc in REQUIRED:
        assert enc in SUPPORTED_ENCODINGS
    assert set(SUPPORTED_ENCODINGS) == set(REF)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (2, 1), (48, 63)])
def test_round_trip(encoding, shape):
    rng = np.random.default_rng(zlib.crc32(f"{encoding}{shape}".encode()))
    a = random_array(rng, encoding, *shape)
    msg = numpy_to_image(a, encoding, frame_id="cam")
    dtype, channels = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (shape[0], shape[1], encoding)
    assert msg.step == shape[1] * channels * dtype.itemsize
    assert msg.is_bigendian == 0
    assert msg.header.frame_id == "cam"
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    # Wire bytes: tightly packed little-endian.
    assert bytes(msg.data) == a.astype(dtype.newbyteorder("<")).tobytes()
    out = check_against_references(msg)
    assert_same(out, a)


def test_round_trip_large_odd_image_is_fast_path():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(481, 641, 3), dtype=np.uint8)
    out = image_to_numpy(numpy_to_image(a, "rgb8"))
    assert_same(out, a)


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "32FC1"])
def test_single_channel_accepts_trailing_unit_axis(encoding):
    rng = np.random.default_rng(2)
    a = random_array(rng, encoding, 4, 5)
    msg = numpy_to_image(a[..., None], encoding)
    assert_same(image_to_numpy(msg), a)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)])
def test_empty_images(shape):
    for enc in ("rgb8", "16UC1"):
        dtype, channels = ENCODINGS[enc]
        full = shape if channels == 1 else shape + (channels,)
        msg = numpy_to_image(np.zeros(full, dtype), enc)
        assert len(msg.data) == 0
        out = image_to_numpy(msg)
        assert out.shape == full and out.dtype == dtype


def test_non_contiguous_and_byteswapped_input_arrays():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 65536, size=(6, 10), dtype=np.uint16)
    sliced = base[::2, 1::3]  # non-contiguous view
    assert_same(image_to_numpy(numpy_to_image(sliced, "16UC1")), sliced)
    swapped = base.astype(">u2")  # same values, big-endian in memory
    msg = numpy_to_image(swapped, "mono16")
    assert msg.is_bigendian == 0
    assert bytes(msg.data) == base.astype("<u2").tobytes()
    assert_same(image_to_numpy(msg), base)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    fortran = np.asfortranarray(rgb)
    assert_same(image_to_numpy(numpy_to_image(fortran, "bgr8")), rgb)


def test_stamp_variants():
    a = np.zeros((2, 2), np.uint8)
    assert numpy_to_image(a, "mono8").header.stamp == Time(sec=0, nanosec=0)
    t = Time(sec=12, nanosec=345)
    msg = numpy_to_image(a, "mono8", stamp=t)
    assert msg.header.stamp == t and msg.header.stamp is not t
    assert numpy_to_image(a, "mono8", stamp=3.25).header.stamp == Time(sec=3, nanosec=250_000_000)
    assert numpy_to_image(a, "mono8", stamp=SimpleNamespace(sec=7, nanosec=9)).header.stamp == Time(sec=7, nanosec=9)
    with pytest.raises(ImageConversionError, match="str"):
        numpy_to_image(a, "mono8", stamp="now")


# ---------------------------------------------------------------------------------------------
# Padding, endianness, buffer types
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [1, 3, 8])
def test_padded_rows_ignore_padding(encoding, pad):
    rng = np.random.default_rng(len(encoding) * 31 + pad)
    a = random_array(rng, encoding, 5, 7)
    dtype, channels = ENCODINGS[encoding]
    step = 7 * channels * dtype.itemsize + pad
    msg = make_msg(encoding, 5, 7, step, pack_rows(a, encoding, step, rng))
    out = check_against_references(msg)
    assert_same(out, a)
    # Re-encoding drops the padding.
    again = numpy_to_image(out, encoding)
    assert again.step == step - pad
    assert_same(image_to_numpy(again), a)


def test_padding_garbage_does_not_leak_specific():
    # 2x2 mono8, step 4: padding bytes 0xEE must never appear in the output.
    payload = bytes([1, 2, 0xEE, 0xEE, 3, 4, 0xEE, 0xEE])
    out = image_to_numpy(make_msg("mono8", 2, 2, 4, payload))
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_big_endian_uint16(encoding, pad):
    values = np.array([[0x0102, 0xFF00, 7], [0x8001, 0, 0xFFFF]], dtype=np.uint16)
    step = 3 * 2 + pad
    payload = b"".join(values[r].astype(">u2").tobytes() + b"\xAA" * pad for r in range(2))
    msg = make_msg(encoding, 2, 3, step, payload, bigendian=True)
    out = check_against_references(msg)
    assert out.dtype == np.dtype(np.uint16) and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    assert out[0, 0] == 258  # would be 513 if the flag were ignored
    # The same bytes flagged little-endian decode to the byte-swapped values.
    msg.is_bigendian = 0
    np.testing.assert_array_equal(image_to_numpy(msg), values.byteswap())


@pytest.mark.parametrize("pad", [0, 2, 5])
def test_big_endian_float32(pad):
    values = np.array([[1.5, -2.25, np.inf], [0.1, -0.0, 3.0e38]], dtype=np.float32)
    step = 3 * 4 + pad
    payload = b"".join(values[r].astype(">f4").tobytes() + b"\x7f" * pad for r in range(2))
    msg = make_msg("32FC1", 2, 3, step, payload, bigendian=True)
    out = check_against_references(msg)
    assert out.dtype == np.dtype(np.float32) and out.dtype.isnative
    assert_same(out, values)
    assert out[0, 0] == 1.5


def test_big_endian_flag_irrelevant_for_8bit():
    payload = bytes(range(12))
    little = image_to_numpy(make_msg("rgb8", 2, 2, 6, payload, bigendian=False))
    big = image_to_numpy(make_msg("rgb8", 2, 2, 6, payload, bigendian=True))
    np.testing.assert_array_equal(little, big)
    np.testing.assert_array_equal(big.reshape(-1), np.arange(12))


@pytest.mark.parametrize("data_type", [array.array, bytes, bytearray, list, memoryview])
def test_data_buffer_types(data_type):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 65536, size=(3, 5), dtype=np.uint16)
    step = 12
    msg = make_msg("16UC1", 3, 5, step, pack_rows(a, "16UC1", step, rng), data_type=data_type)
    assert isinstance(msg.data, data_type)
    assert_same(check_against_references(msg), a)


def test_output_does_not_alias_message():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    msg = numpy_to_image(a, "rgb8")
    out = image_to_numpy(msg)
    rgb = to_rgb8(msg)
    assert not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    assert out.flags.c_contiguous and out.flags.writeable and rgb.flags.c_contiguous
    # Mutating the message afterwards changes neither result...
    for i in range(len(msg.data)):
        msg.data[i] = (msg.data[i] + 1) % 256
    assert_same(out, a)
    assert_same(rgb, a)
    # ...and no buffer export is left on the array.array (resizing would raise BufferError).
    msg.data.append(0)
    msg.data.pop()
    # Mutating the result does not change the message either.
    before = bytes(msg.data)
    out[:] = 0
    assert bytes(msg.data) == before


def test_encoding_does_not_alias_input_array():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = numpy_to_image(a, "mono8")
    a[:] = 99
    assert list(msg.data) == list(range(12))


# ---------------------------------------------------------------------------------------------
# to_rgb8
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 3])
def test_to_rgb8_each_encoding(pad):
    rng = np.random.default_rng(6 + pad)
    rgba = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    rgb = rgba[..., :3]
    gray = rgba[..., 0]
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": rgba,
        "bgra8": np.concatenate([rgb[..., ::-1], rgba[..., 3:]], axis=2),
    }
    for enc, src in cases.items():
        step = 5 * src.shape[2] + pad
        msg = make_msg(enc, 4, 5, step, pack_rows(src, enc, step, rng))
        out = to_rgb8(msg)
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous, enc
        np.testing.assert_array_equal(out, rgb, err_msg=enc)
    msg = make_msg("mono8", 4, 5, 5 + pad, pack_rows(gray, "mono8", 5 + pad, rng))
    out = to_rgb8(msg)
    assert out.shape == (4, 5, 3) and out.flags.c_contiguous
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], gray)


def test_to_rgb8_known_pixel():
    msg = make_msg("bgr8", 1, 1, 3, bytes([10, 20, 30]))
    np.testing.assert_array_equal(to_rgb8(msg), [[[30, 20, 10]]])
    msg = make_msg("bgra8", 1, 1, 4, bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(to_rgb8(msg), [[[30, 20, 10]]])


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "8UC3", "8UC1"])
def test_to_rgb8_rejects_non_colour_8bit(encoding):
    rng = np.random.default_rng(7)
    msg = numpy_to_image(random_array(rng, encoding, 2, 3), encoding)
    with pytest.raises(ImageConversionError, match=encoding):
        to_rgb8(msg)


def test_to_rgb8_rejects_unsupported():
    msg = make_msg("yuv422", 1, 2, 4, bytes(4))
    with pytest.raises(ImageConversionError, match="yuv422"):
        to_rgb8(msg)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_error_is_value_error():
    assert issubclass(ImageConversionError, ValueError)


@pytest.mark.parametrize("encoding", ["yuv422", "RGB8", "", "bayer_rggb8", "64FC1"])
def test_decode_unsupported_encoding(encoding):
    msg = make_msg(encoding, 1, 2, 4, bytes(4))
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(msg)
    text = str(info.value)
    assert repr(encoding) in text
    for enc in REQUIRED:
        assert enc in text


@pytest.mark.parametrize("delta", [-1, 1, -6])
def test_decode_data_size_mismatch(delta):
    msg = make_msg("rgb8", 2, 2, 6, bytes(12 + delta))
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(msg)
    assert f"{12 + delta} bytes" in str(info.value) and "12" in str(info.value)


def test_decode_step_too_small():
    msg = make_msg("16UC1", 2, 3, 5, bytes(10))
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(msg)
    assert "step 5" in str(info.value) and "6" in str(info.value)


def test_decode_data_not_bytes():
    msg = make_msg("mono8", 1, 2, 2, b"\x00\x00", data_type=bytes)
    msg.data = [0, 300]
    with pytest.raises(ImageConversionError, match="list"):
        image_to_numpy(msg)


@pytest.mark.parametrize(
    "encoding, array_, needle",
    [
        ("rgb8", np.zeros((2, 2, 3), np.uint16), "uint16"),
        ("rgb8", np.zeros((2, 2, 3), np.int8), "int8"),
        ("16UC1", np.zeros((2, 2), np.int16), "int16"),
        ("16UC1", np.zeros((2, 2), np.float32), "float32"),
        ("32FC1", np.zeros((2, 2), np.float64), "float64"),
        ("mono8", np.zeros((2, 2), bool), "bool"),
        ("rgb8", np.zeros((2, 2, 4), np.uint8), "(2, 2, 4)"),
        ("rgb8", np.zeros((2, 2), np.uint8), "(2, 2)"),
        ("bgra8", np.zeros((2, 2, 3), np.uint8), "(2, 2, 3)"),
        ("mono8", np.zeros((2, 2, 3), np.uint8), "(2, 2, 3)"),
        ("mono16", np.zeros((4,), np.uint16), "(4,)"),
        ("32FC1", np.zeros((1, 2, 2, 1), np.float32), "(1, 2, 2, 1)"),
    ],
)
def test_encode_wrong_dtype_or_shape(encoding, array_, needle):
    with pytest.raises(ImageConversionError) as info:
        numpy_to_image(array_, encoding)
    assert needle in str(info.value)
    assert encoding in str(info.value)


def test_encode_unsupported_encoding_and_non_array():
    with pytest.raises(ImageConversionError) as info:
        numpy_to_image(np.zeros((2, 2), np.uint8), "yuv422")
    assert "'yuv422'" in str(info.value) and "rgb8" in str(info.value)
    with pytest.raises(ImageConversionError, match="list"):
        numpy_to_image([[0, 1], [2, 3]], "mono8")


# ---------------------------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    encoding=st.sampled_from(SUPPORTED_ENCODINGS),
    height=st.integers(0, 6),
    width=st.integers(0, 9),
    pad=st.integers(0, 9),
    bigendian=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_decode_matches_reference(encoding, height, width, pad, bigendian, seed):
    dtype, channels = ENCODINGS[encoding]
    step = width * channels * dtype.itemsize + pad
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, size=height * step, dtype=np.uint8).tobytes()  # padding is garbage too
    msg = make_msg(encoding, height, width, step, payload, bigendian=bigendian)
    out = check_against_references(msg)
    # Re-encoding is tight, little-endian and round-trips bit-exactly.
    again = numpy_to_image(out, encoding)
    assert again.step == width * channels * dtype.itemsize
    assert again.is_bigendian == 0
    assert len(again.data) == height * again.step
    assert_same(image_to_numpy(again), out)
    if height and width and encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        rgb = to_rgb8(msg)
        assert rgb.shape == (height, width, 3)
        ref = out if out.ndim == 3 else out[..., None]
        order = [2, 1, 0] if encoding.startswith("bgr") else [0, 1, 2]
        expected = np.repeat(ref, 3, axis=2) if encoding == "mono8" else ref[..., order]
        np.testing.assert_array_equal(rgb, expected)
