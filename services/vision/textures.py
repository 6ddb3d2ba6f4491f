"""Synthetic product surfaces with injected defects, and their ground truth.

The defect model is trained on these images (scripts/train_defect_model.py) and the manufacturing
app's fleet simulator makes its inspection photographs with them. Everything is drawn with numpy and
OpenCV from a ``numpy.random.Generator``, so the same seed gives the same image, mask and boxes.

Surfaces: brushed metal, cast metal, woven (textile-like) and painted, each under a lighting gradient
with sensor noise. Defects: scratches (thin smooth lines or arcs), spots (blobs and stains) and cracks
(dark, jagged, branching lines). The mask holds one class id per pixel (see ``CLASSES``).

    rng = np.random.default_rng(7)
    sample = product_image(rng, 256, defects=sample_defects(rng, probability=0.3))
    sample.image   # uint8 [256, 256, 3], RGB
    sample.mask    # uint8 [256, 256], 0 background, 1 scratch, 2 spot, 3 crack
    sample.instances  # uint8 [256, 256], 0 background, i + 1 where sample.defects[i] is
    sample.defects # [Defect(kind, box=(x, y, width, height), pixels)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Class ids of the mask, in the order the model's output channels follow.
CLASSES = ("background", "scratch", "spot", "crack")
DEFECT_KINDS = CLASSES[1:]
SURFACES = ("brushed_metal", "cast", "woven", "painted")


@dataclass(frozen=True)
class Defect:
    kind: str
    box: tuple[int, int, int, int]   # x, y, width, height in pixels, top-left origin
    pixels: int                      # mask pixels of this defect


@dataclass(frozen=True)
class ProductImage:
    image: np.ndarray        # uint8 [H, W, 3], RGB
    mask: np.ndarray         # uint8 [H, W], class ids of CLASSES
    instances: np.ndarray    # uint8 [H, W], 0 background, i + 1 for defects[i]
    defects: list[Defect]
    surface: str


def sample_defects(rng: np.random.Generator, probability: float, max_defects: int = 3) -> list[str]:
    """Defect kinds for one part: none with 1 - ``probability``, else 1 to ``max_defects`` of any kind."""
    if rng.random() >= probability:
        return []
    return [str(k) for k in rng.choice(DEFECT_KINDS, size=int(rng.integers(1, max_defects + 1)))]


def product_image(rng: np.random.Generator, size: int | tuple[int, int] = 256, defects: Sequence[str] = (),
                  surface: str | None = None) -> ProductImage:
    """A surface of ``size`` (side, or (height, width)) with the given defect kinds injected, apart from each other."""
    height, width = (size, size) if isinstance(size, int) else size
    surface = surface or str(rng.choice(SURFACES))
    image = _SURFACE_MAKERS[surface](rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    placed: list[Defect] = []
    for kind in defects:
        layer = _place_apart(rng, kind, height, width, mask)
        if layer is None:   # no free room left on a small image
            continue
        image = _DEFECT_PAINTERS[kind](rng, image, layer)
        mask[layer > 0] = CLASSES.index(kind)
        instances[layer > 0] = len(placed) + 1
        x, y, w, h = cv2.boundingRect(layer)
        placed.append(Defect(kind, (x, y, w, h), int(np.count_nonzero(layer))))
    image = _lighting(rng, image)
    image = image + rng.normal(0, rng.uniform(2, 6), image.shape)
    return ProductImage(np.clip(image, 0, 255).astype(np.uint8), mask, instances, placed, surface)


# -- surfaces (float32 [H, W, 3] in 0..255) ------------------------------------------------------------


def _tint(rng: np.random.Generator, gray: np.ndarray, base: np.ndarray) -> np.ndarray:
    return gray[..., None] * (base / base.mean())[None, None, :]


def _brushed_metal(rng, h, w):
    # Noise smeared along one direction: the grain a brush or grinder leaves.
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    length = int(rng.integers(15, 41))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1 / length
    angle = rng.uniform(-25, 25) + (90 if rng.random() < 0.5 else 0)
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    grain = cv2.filter2D(noise, -1, kernel / max(kernel.sum(), 1e-6), borderType=cv2.BORDER_REFLECT)
    gray = rng.uniform(120, 185) + grain / (grain.std() + 1e-6) * rng.uniform(6, 12)
    return _tint(rng, gray, np.array([1.0, 1.0, rng.uniform(1.0, 1.08)]))


def _cast(rng, h, w):
    # Blotchy low-frequency tone with fine granular pits: sand-cast iron or aluminium.
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(6, 14))
    fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8)
    gray = (rng.uniform(90, 150) + coarse / (coarse.std() + 1e-6) * rng.uniform(6, 12)
            + fine / (fine.std() + 1e-6) * rng.uniform(4, 8))
    return _tint(rng, gray, np.array([1.0, rng.uniform(0.95, 1.02), rng.uniform(0.9, 1.0)]))


def _woven(rng, h, w):
    # Two crossing families of threads, slightly wavy: a textile or carbon-fibre weave.
    period = rng.uniform(5, 10)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    wobble = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 8) * 4
    warp = np.sin(2 * np.pi * (u + wobble) / period)
    weft = np.sin(2 * np.pi * (v + wobble) / period)
    checker = np.sign(np.sin(np.pi * (u + wobble) / period) * np.sin(np.pi * (v + wobble) / period))
    pattern = np.where(checker > 0, warp, weft)
    gray = rng.uniform(90, 170) + pattern * rng.uniform(8, 16)
    base = rng.uniform(0.7, 1.3, 3)
    return _tint(rng, gray, base)


def _painted(rng, h, w):
    # Smooth coloured coat with a fine "orange peel" texture.
    peel = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1.5, 3))
    gray = rng.uniform(110, 180) + peel / (peel.std() + 1e-6) * rng.uniform(3, 6)
    base = rng.uniform(0.4, 1.6, 3)
    return _tint(rng, gray, base)


_SURFACE_MAKERS = {"brushed_metal": _brushed_metal, "cast": _cast, "woven": _woven, "painted": _painted}


def _lighting(rng, image):
    """A linear gradient and a soft hot spot: the uneven light of a real inspection station."""
    h, w = image.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    gradient = 1 + gx * (x / w - 0.5) + gy * (y / h - 0.5)
    cx, cy, radius = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.4, 1.0) * max(h, w)
    spot = 1 + rng.uniform(0, 0.2) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius ** 2))
    return image * (gradient * spot)[..., None]


# -- defects: a layer (uint8 0/255 mask) and how it changes the surface ------------------------------------


def _place_apart(rng, kind: str, h: int, w: int, taken: np.ndarray, tries: int = 20) -> np.ndarray | None:
    """A layer for ``kind`` that keeps a margin from defects already placed (instances stay separate)."""
    margin = cv2.dilate((taken > 0).astype(np.uint8), np.ones((9, 9), np.uint8))
    for _ in range(tries):
        layer = _DEFECT_SHAPES[kind](rng, h, w)
        if np.count_nonzero(layer) and not np.any(margin[layer > 0]):
            return layer
    return None


def _scratch_shape(rng, h, w):
    """A thin smooth stroke: straight or a gentle arc, 1-2 px wide."""
    side = min(h, w)
    length = rng.uniform(0.25, 0.6) * side
    x0, y0 = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25) * length   # sideways offset of the middle: 0 is straight
    t = np.linspace(-0.5, 0.5, 24)
    along = np.stack([np.cos(angle), np.sin(angle)]) * length
    across = np.stack([-np.sin(angle), np.cos(angle)]) * bend
    points = np.array([x0, y0])[:, None] + along[:, None] * t + across[:, None] * (1 - 4 * t ** 2)
    layer = np.zeros((h, w), np.uint8)
    cv2.polylines(layer, [np.round(points.T).astype(np.int32)], False, 255, int(rng.integers(1, 3)), cv2.LINE_8)
    return layer


def _spot_shape(rng, h, w):
    """A blob or stain: an irregular ellipse, 4-14% of the side across."""
    side = min(h, w)
    radius = rng.uniform(0.02, 0.07) * side + 2
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = radius * rng.uniform(0.7, 1.3) * (1 + 0.25 * rng.normal(0, 1, 16).clip(-2, 2) / 2)
    stretch = rng.uniform(0.6, 1.0)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * stretch * np.sin(angles)], axis=1)
    layer = np.zeros((h, w), np.uint8)
    cv2.fillPoly(layer, [np.round(points).astype(np.int32)], 255, cv2.LINE_8)
    return layer


def _crack_shape(rng, h, w):
    """A jagged random walk with one to three branches, 1-3 px wide."""
    side = min(h, w)
    layer = np.zeros((h, w), np.uint8)
    start = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _jagged_walk(rng, start, heading, rng.uniform(0.25, 0.45) * side)
    cv2.polylines(layer, [trunk], False, 255, int(rng.integers(2, 4)), cv2.LINE_8)
    for _ in range(int(rng.integers(1, 4))):
        origin = trunk[int(rng.integers(len(trunk) // 4, len(trunk)))].astype(np.float64)
        branch = _jagged_walk(rng, origin, heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                              rng.uniform(0.08, 0.2) * side)
        cv2.polylines(layer, [branch], False, 255, int(rng.integers(1, 3)), cv2.LINE_8)
    return layer


def _jagged_walk(rng, start, heading, length):
    step = 3.0
    points, position, drift = [start], start.copy(), 0.0
    for _ in range(max(3, int(length / step))):
        drift += rng.normal(0, 0.12)              # the crack's course bends slowly ...
        turn = heading + drift + rng.normal(0, 0.7)   # ... and zigzags at every step: jagged
        position = position + step * np.array([np.cos(turn), np.sin(turn)])
        points.append(position)
    return np.round(np.array(points)).astype(np.int32)


_DEFECT_SHAPES = {"scratch": _scratch_shape, "spot": _spot_shape, "crack": _crack_shape}


def _paint_scratch(rng, image, layer):
    # Bright (light caught by the groove) or dark, softened by a slight blur.
    sign = 1 if rng.random() < 0.6 else -1
    alpha = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), 0.6)
    return image + sign * rng.uniform(35, 70) * alpha[..., None]


def _paint_spot(rng, image, layer):
    # A stain: darker or discoloured, with a soft rim.
    alpha = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), 1.2)
    alpha = np.maximum(alpha, layer.astype(np.float32) / 255)
    colour = rng.uniform(0.35, 0.75, 3) * (1 if rng.random() < 0.7 else 1.6)
    return image * (1 - alpha[..., None]) + image * colour[None, None, :] * alpha[..., None]


def _paint_crack(rng, image, layer):
    # Deep and dark: light does not reach the bottom of a crack.
    alpha = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), 0.5)
    alpha = np.maximum(alpha, layer.astype(np.float32) / 255)
    return image * (1 - rng.uniform(0.6, 0.85) * alpha[..., None])


_DEFECT_PAINTERS = {"scratch": _paint_scratch, "spot": _paint_spot, "crack": _paint_crack}
