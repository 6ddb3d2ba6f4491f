"""Looks a picture can be given with OpenCV: the picture library's styles, and the names every client offers.

Each style is a short function of an RGB uint8 picture and a random generator; the generator (seeded by
the request) is the only source of randomness, so a style gives the same pixels for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

STYLES = ("", "natural", "storybook", "watercolor", "sketch", "cinematic", "vintage", "noir")

#: What a diffusion model is told for each style (appended to the prompt).
STYLE_PROMPTS = {
    "": "",
    "natural": "natural colours, photograph",
    "storybook": "storybook illustration, soft colours",
    "watercolor": "watercolor painting",
    "sketch": "pencil sketch",
    "cinematic": "cinematic film still, teal and orange grade",
    "vintage": "vintage sepia photograph, film grain",
    "noir": "black and white film noir, high contrast",
}


def apply_style(picture: np.ndarray, style: str, seed: int) -> np.ndarray:
    """``picture`` (RGB uint8) in ``style``; "" leaves it as it is."""
    return _STYLE_FUNCTIONS[style](picture, np.random.default_rng(seed))


def as_is(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return picture


def natural(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half a grey-world white balance (a cast is reduced, a sunset stays warm), then the lightness
    stretched to its 1st..99th percentile."""
    balanced = _grey_world(picture)
    lab = cv2.cvtColor(balanced, cv2.COLOR_RGB2LAB)
    lab[..., 0] = _stretch(lab[..., 0], 1, 99)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def storybook(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat, soft, saturated colour areas with gentle dark outlines, like a picture-book illustration."""
    smooth = cv2.edgePreservingFilter(picture, flags=cv2.RECURS_FILTER, sigma_s=40, sigma_r=0.35)
    smooth = _saturate(cv2.bilateralFilter(smooth, 7, 40, 7), 1.2)
    return _darken_along(smooth, _outlines(picture), strength=0.45)


def watercolor(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OpenCV's stylization (washes of colour), lightened as paint on white paper, on a paper texture."""
    washed = cv2.stylization(picture, sigma_s=60, sigma_r=0.45)
    light = cv2.addWeighted(washed, 0.8, np.full_like(washed, 255), 0.2, 0)
    return _multiply(light, _paper(picture.shape[:2], rng))


def sketch(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pencil sketch with a trace of the picture's colour: coloured pencil over graphite, mostly grey."""
    grey, colour = cv2.pencilSketch(picture, sigma_s=60, sigma_r=0.06, shade_factor=0.03)
    graphite = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    return _multiply(cv2.addWeighted(graphite, 0.8, colour, 0.2, 0), _paper(picture.shape[:2], rng))


def cinematic(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Teal shadows and orange highlights, a little contrast, and a vignette (no letterbox bars)."""
    rgb = picture.astype(np.float32) / 255
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    teal, orange = np.array([0.0, 0.5, 0.55], np.float32), np.array([1.0, 0.6, 0.25], np.float32)
    tint = (1 - luma) * teal + luma * orange
    graded = np.clip(0.8 * rgb + 0.2 * tint * 2 * luma, 0, 1)
    graded = np.clip((graded - 0.5) * 1.12 + 0.5, 0, 1)
    return _to_uint8(graded * _vignette(picture.shape[:2], 0.45))


def vintage(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sepia tones, faded blacks, film grain and a vignette."""
    rgb = picture.astype(np.float32) / 255
    sepia = rgb @ np.array([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534], [0.189, 0.168, 0.131]], np.float32)
    faded = 0.08 + 0.85 * np.clip(sepia, 0, 1)
    grain = rng.normal(0, 0.035, picture.shape[:2]).astype(np.float32)[..., None]
    return _to_uint8((faded + grain) * _vignette(picture.shape[:2], 0.55))


def noir(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """High-contrast black and white: local contrast (CLAHE), deep blacks, a vignette."""
    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    grey = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(8, 8)).apply(grey)
    contrasted = np.clip((_stretch(grey, 2, 98).astype(np.float32) / 255 - 0.5) * 1.4 + 0.5, 0, 1)
    grey = _to_uint8(contrasted * _vignette(picture.shape[:2], 0.6)[..., 0])
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


_STYLE_FUNCTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "": as_is, "natural": natural, "storybook": storybook, "watercolor": watercolor, "sketch": sketch,
    "cinematic": cinematic, "vintage": vintage, "noir": noir,
}


# -- building blocks --------------------------------------------------------------------------------

def _grey_world(picture: np.ndarray) -> np.ndarray:
    """Scale each channel halfway towards equal means, each gain within 0.8..1.25 (a grey picture stays)."""
    means = picture.reshape(-1, 3).mean(0) + 1e-3
    gains = np.clip(np.sqrt(means.mean() / means), 0.8, 1.25).astype(np.float32)
    return _to_uint8(picture.astype(np.float32) / 255 * gains)


def _stretch(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    lo, hi = np.percentile(channel, (low, high))
    if hi - lo < 1:
        return channel
    return _to_uint8((channel.astype(np.float32) - lo) / (hi - lo))


def _saturate(picture: np.ndarray, factor: float) -> np.ndarray:
    hsv = cv2.cvtColor(picture, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _outlines(picture: np.ndarray) -> np.ndarray:
    """Where the picture has strong edges, in [0, 1], softened to look drawn rather than computed."""
    grey = cv2.GaussianBlur(cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    edges = cv2.Canny(grey, 80, 180)
    return cv2.GaussianBlur(cv2.dilate(edges, np.ones((2, 2), np.uint8)), (3, 3), 0).astype(np.float32) / 255


def _darken_along(picture: np.ndarray, lines: np.ndarray, strength: float) -> np.ndarray:
    return _to_uint8(picture.astype(np.float32) / 255 * (1 - strength * lines[..., None]))


def _paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A faint paper grain in [0.9, 1]: noise blurred at two scales."""
    fine = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 1.0)
    coarse = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 6.0)
    grain = 0.6 * _normalised(fine) + 0.4 * _normalised(coarse)
    return 0.9 + 0.1 * grain


def _normalised(values: np.ndarray) -> np.ndarray:
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def _multiply(picture: np.ndarray, texture: np.ndarray) -> np.ndarray:
    return _to_uint8(picture.astype(np.float32) / 255 * texture[..., None])


def _vignette(shape: tuple[int, int], strength: float) -> np.ndarray:
    """1 in the middle, falling to 1 - strength in the corners; shape [H, W, 1]."""
    height, width = shape
    y, x = np.ogrid[-1:1:complex(0, height), -1:1:complex(0, width)]
    distance = np.sqrt(x * x + y * y) / np.sqrt(2)
    return (1 - strength * distance.astype(np.float32) ** 2)[..., None]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)
