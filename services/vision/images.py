"""Images in: PNG, JPEG or BMP bytes, or raw uint8 pixels, checked before they cost memory or model time.

The size of an encoded image is read from its header before it is decoded, so a small file that
would decompress to gigabytes (a decompression bomb) is refused without being decoded. Every
problem is an INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from modalmesh.v1 import common_pb2, vision_pb2
from services.runtime.errors import InvalidArgument
from services.runtime.tensors import tensor_array, tensor_dtype

MIN_SIDE = 16


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 4096 * 1024
    max_side: int = 4096

    def check(self, width: int, height: int, field: str) -> None:
        if width < MIN_SIDE or height < MIN_SIDE:
            raise InvalidArgument((field, f"{width} x {height} pixels: each side needs at least {MIN_SIDE}"))
        if width > self.max_side or height > self.max_side:
            raise InvalidArgument((field, f"{width} x {height} pixels: a side exceeds the limit of {self.max_side}"))
        if width * height > self.max_pixels:
            raise InvalidArgument((field, f"{width} x {height} = {width * height} pixels exceed the limit of "
                                          f"{self.max_pixels}; downscale or crop the image"))


def image_rgb(image: vision_pb2.Image, limits: ImageLimits, field: str = "image") -> np.ndarray:
    """The image as uint8 [H, W, 3] RGB, or InvalidArgument."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode(image.encoded, limits, f"{field}.encoded")
    if source == "pixels":
        return from_pixels(image.pixels, limits, f"{field}.pixels")
    raise InvalidArgument((field, "an image is required: set encoded (PNG, JPEG or BMP bytes) or pixels"))


def decode(data: bytes, limits: ImageLimits, field: str) -> np.ndarray:
    if not data:
        raise InvalidArgument((field, "empty: no image bytes"))
    kind, width, height = read_header(data, field)
    limits.check(width, height, field)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise InvalidArgument((field, f"{kind} header reads {width} x {height}, but the image data cannot be "
                                      "decoded (truncated or corrupt)"))
    if decoded.shape[:2] != (height, width):   # the decoder disagrees with the header we checked
        raise InvalidArgument((field, f"{kind} decodes to {decoded.shape[1]} x {decoded.shape[0]}, not the "
                                      f"{width} x {height} its header states"))
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def read_header(data: bytes, field: str) -> tuple[str, int, int]:
    """(format, width, height) from the first bytes of a PNG, JPEG or BMP file."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidArgument((field, "PNG without an IHDR header"))
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data.startswith(b"\xff\xd8"):
        return ("JPEG", *_jpeg_size(data, field))
    if data.startswith(b"BM"):
        return ("BMP", *_bmp_size(data, field))
    raise InvalidArgument((field, f"not a PNG, JPEG or BMP image (starts with {data[:8].hex()})"))


# JPEG start-of-frame markers (baseline, progressive, lossless ...): the frame header holds the size.
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes, field: str) -> tuple[int, int]:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            break
        marker = data[offset + 1]
        if marker == 0xFF:   # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):   # markers without a length
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in _JPEG_FRAMES:
            if offset + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return width, height
        if marker == 0xDA:   # scan data begins: no frame header came before it
            break
        offset += 2 + length
    raise InvalidArgument((field, "JPEG without a readable frame header (truncated or corrupt)"))


def _bmp_size(data: bytes, field: str) -> tuple[int, int]:
    if len(data) < 26:
        raise InvalidArgument((field, "BMP shorter than its header"))
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:   # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)   # negative height: rows stored top-down


def from_pixels(tensor: common_pb2.Tensor, limits: ImageLimits, field: str) -> np.ndarray:
    dtype = tensor_dtype(tensor, (common_pb2.DATA_TYPE_UINT8,), field)
    shape = list(tensor.shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise InvalidArgument((f"{field}.shape", f"{shape}: give [height, width] (grey) or [height, width, 3] "
                                                 "(RGB)"))
    if any(d <= 0 for d in shape):
        raise InvalidArgument((f"{field}.shape", f"{shape}: every dimension must be positive"))
    height, width = shape[:2]
    limits.check(width, height, f"{field}.shape")
    pixels = tensor_array(tensor, dtype, field)
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return np.repeat(pixels.reshape(height, width, 1), 3, axis=2)
    return pixels


def encode_png(mask: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError("PNG encoding of the mask failed")
    return png.tobytes()
