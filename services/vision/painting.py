"""Shared painters for procedural storybook pictures: a sky in a light, hills, trees, water, buildings, glows.

A picture is painted in two uint8 layers: the sky (RGB), and a landscape (RGBA) drawn over it with
OpenCV's polygon and shape functions. The landscape is lit by the light's ambient colour when the two are
composited, so one recipe paints a place by day, at dusk and at night; lamps and lit windows are drawn after
that, unaffected by the dark. Every random choice comes from the painter's generator, so a picture is the same
pixels on every call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

WIDTH, HEIGHT = 960, 540

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Light:
    name: str                 # "day", "dusk", "night"
    words: str                # how captions say it: "on a sunny day"
    sky_top: RGB
    sky_horizon: RGB
    ambient: RGB              # what the landscape's colours are multiplied by
    body: RGB                 # the sun's or the moon's colour
    body_height: float        # its centre, as a fraction of the height
    lamps_lit: bool


LIGHTS = {
    "day": Light("day", "on a sunny day", (70, 140, 230), (190, 225, 250), (1.0, 1.0, 1.0),
                 (255, 250, 215), 0.16, False),
    "dusk": Light("dusk", "at dusk, under an orange sunset sky", (60, 60, 140), (255, 150, 80),
                  (0.85, 0.62, 0.55), (255, 200, 120), 0.50, True),
    "night": Light("night", "at night, under the moon and the stars", (14, 22, 62), (55, 75, 135),
                   (0.42, 0.48, 0.72), (245, 245, 225), 0.17, True),
}


@dataclass
class Painter:
    """The canvas of one picture while a recipe paints it."""

    light: Light
    rng: np.random.Generator
    sky: np.ndarray = field(default_factory=lambda: np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    land: np.ndarray = field(default_factory=lambda: np.zeros((HEIGHT, WIDTH, 4), np.uint8))
    lamps: list[Callable[[np.ndarray], None]] = field(default_factory=list)

    @property
    def night(self) -> bool:
        return self.light.name == "night"

    def haze(self, colour: RGB, amount: float) -> RGB:
        """``colour`` mixed with the horizon by ``amount`` (0..1): far things fade into the sky. Divided by
        the ambient light so that, once lit, it is the horizon's own colour."""
        horizon = np.array(self.light.sky_horizon) / np.maximum(self.light.ambient, 0.05)
        return tuple(np.clip(np.array(colour) * (1 - amount) + horizon * amount, 0, 255))

    def fill(self, points: np.ndarray, colour: RGB) -> None:
        cv2.fillPoly(self.land, [np.round(points).astype(np.int32)], (*colour, 255), cv2.LINE_AA)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: RGB) -> None:
        cv2.rectangle(self.land, (int(x0), int(y0)), (int(x1), int(y1)), (*colour, 255), -1)

    def disc(self, x: float, y: float, r: float, colour: RGB) -> None:
        cv2.circle(self.land, (int(x), int(y)), max(1, int(r)), (*colour, 255), -1, cv2.LINE_AA)

    def oval(self, x: float, y: float, rx: float, ry: float, colour: RGB, start: float = 0, end: float = 360) -> None:
        cv2.ellipse(self.land, (int(x), int(y)), (max(1, int(rx)), max(1, int(ry))), 0, start, end,
                    (*colour, 255), -1, cv2.LINE_AA)

    def line(self, points: np.ndarray, colour: RGB, thickness: int) -> None:
        cv2.polylines(self.land, [np.round(points).astype(np.int32)], False, (*colour, 255), thickness, cv2.LINE_AA)

    def lamp(self, x: float, y: float, w: float, h: float, day_colour: RGB = (120, 150, 170),
             lit: RGB = (255, 210, 110)) -> None:
        """A window or a lamp: glass by day, lit and glowing at dusk and at night."""
        if not self.light.lamps_lit:
            self.rect(x, y, x + w, y + h, day_colour)
            return
        self.rect(x, y, x + w, y + h, (0, 0, 0))   # the place in the layer, lit below
        self.lamps.append(lambda out: cv2.rectangle(out, (int(x), int(y)), (int(x + w), int(y + h)), lit, -1))


# -- noise ------------------------------------------------------------------------------------------

def ridge(rng: np.random.Generator, base: float, amplitude: float, roughness: int = 6) -> np.ndarray:
    """A skyline's height at every x: octaves of smooth value noise around ``base`` (pixels from the top)."""
    xs = np.arange(WIDTH, dtype=np.float32)
    line = np.full(WIDTH, base, np.float32)
    for octave in range(4):
        knots = roughness * 2 ** octave + 2
        values = rng.uniform(-1, 1, knots)
        line += amplitude / 2 ** octave * np.interp(xs, np.linspace(0, WIDTH, knots), values)
    return line


def silhouette(line: np.ndarray, bottom: float = HEIGHT) -> np.ndarray:
    xs = np.arange(WIDTH)
    return np.concatenate([np.stack([xs, line], 1), [[WIDTH, bottom], [0, bottom]]])


# -- sky ----------------------------------------------------------------------------------------------

SKY_SCALE = 4   # the sky's gradient, glow and clouds are smooth: painted at a quarter size, then enlarged


def paint_sky(p: Painter, horizon: float = 0.6, clouds: int = 4) -> None:
    """Gradient from the top to the horizon (a fraction of the height), the sun's or the moon's glow and soft
    clouds, painted small and enlarged; then the sun or the moon, and stars at night, drawn sharp."""
    height, width = HEIGHT // SKY_SCALE, WIDTH // SKY_SCALE
    t = np.clip(np.linspace(0, 1, height, dtype=np.float32) / horizon, 0, 1)[:, None, None] ** 1.4
    top, bottom = np.array(p.light.sky_top, np.float32), np.array(p.light.sky_horizon, np.float32)
    sky = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    x, y = p.rng.uniform(0.15, 0.85) * WIDTH, min(p.light.body_height, horizon - 0.04) * HEIGHT
    radius = {"day": 34, "dusk": 46, "night": 26}[p.light.name]
    _blend(sky, _soft_disc(x, y, radius * 2.2, radius), p.light.body, 0.45)
    _blend(sky, _clouds(p, clouds, horizon), CLOUD_COLOURS[p.light.name], 0.85)
    p.sky = cv2.resize(np.clip(sky, 0, 255).astype(np.uint8), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    if p.night:
        stars(p)
    cv2.circle(p.sky, (int(x), int(y)), radius, p.light.body, -1, cv2.LINE_AA)
    if p.night:   # the moon's shadowed side: a crescent
        cv2.circle(p.sky, (int(x + radius * 0.45), int(y - radius * 0.2)), radius, p.light.sky_top, -1, cv2.LINE_AA)


CLOUD_COLOURS = {"day": (250, 250, 252), "dusk": (250, 170, 150), "night": (70, 80, 120)}


def _blend(picture: np.ndarray, mask: np.ndarray, colour: RGB, strength: float) -> None:
    picture += mask[..., None] * strength * (np.array(colour, np.float32) - picture)


def _soft_disc(x: float, y: float, radius: float, blur: float) -> np.ndarray:
    """A blurred disc at a quarter size: a glow."""
    mask = np.zeros((HEIGHT // SKY_SCALE, WIDTH // SKY_SCALE), np.float32)
    cv2.circle(mask, (int(x / SKY_SCALE), int(y / SKY_SCALE)), max(1, int(radius / SKY_SCALE)), 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), blur / SKY_SCALE)


def stars(p: Painter) -> None:
    """A few hundred stars, thicker towards the top of the sky."""
    count = 260
    xs, ys = p.rng.integers(0, WIDTH, count), (p.rng.random(count) ** 1.6 * HEIGHT * 0.6).astype(int)
    brightness = p.rng.uniform(120, 255, count).astype(np.uint8)
    p.sky[ys, xs] = np.maximum(p.sky[ys, xs], brightness[:, None])


def _clouds(p: Painter, count: int, horizon: float) -> np.ndarray:
    """Clusters of ellipses, blurred, at a quarter size: a mask of soft clouds."""
    mask = np.zeros((HEIGHT // SKY_SCALE, WIDTH // SKY_SCALE), np.float32)
    for _ in range(count):
        cx, cy = p.rng.uniform(0, WIDTH / SKY_SCALE), p.rng.uniform(0.08, horizon * 0.7) * HEIGHT / SKY_SCALE
        for _ in range(5):
            rx, ry = p.rng.uniform(8, 22), p.rng.uniform(4, 8)
            cv2.ellipse(mask, (int(cx + p.rng.uniform(-20, 20)), int(cy + p.rng.uniform(-4, 3))),
                        (int(rx), int(ry)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), 2.5)


# -- land ---------------------------------------------------------------------------------------------

def hills(p: Painter, base: float, amplitude: float, colour: RGB, far: float = 0.0, roughness: int = 3) -> np.ndarray:
    """A band of hills (``far`` 0..1 fades it into the horizon); returns its skyline."""
    line = ridge(p.rng, base, amplitude, roughness)
    p.fill(silhouette(line), p.haze(colour, far))
    return line


def mountains(p: Painter, base: float, height: float, colour: RGB, far: float, snow: bool = False) -> np.ndarray:
    """Jagged peaks: a few triangles' envelope roughened by noise, snow-capped if asked."""
    xs = np.arange(WIDTH, dtype=np.float32)
    peaks = p.rng.uniform(0, WIDTH, 5)
    heights = p.rng.uniform(0.5, 1.0, 5) * height
    envelope = np.max(heights[:, None] - np.abs(xs[None] - peaks[:, None]) * p.rng.uniform(0.5, 0.9), axis=0)
    line = base - np.maximum(envelope, 0) + ridge(p.rng, 0, 10, 12)
    p.fill(silhouette(line), p.haze(colour, far))
    if snow:
        cap = np.minimum(line + 0.0, base - height * 0.55)
        snow_line = np.maximum(line, cap + ridge(p.rng, 0, 8, 10))
        top = np.concatenate([np.stack([xs, line], 1), np.stack([xs[::-1], snow_line[::-1]], 1)])
        p.fill(top, p.haze((245, 248, 255), far * 0.6))
    return line


def ground(p: Painter, top: float, colour: RGB, texture: RGB | None = None, strokes: int = 0) -> None:
    """A flat field from ``top`` down, with short brush strokes of ``texture`` (grass, snow, sand)."""
    p.rect(0, top, WIDTH, HEIGHT, colour)
    for _ in range(strokes):
        x, y = p.rng.uniform(0, WIDTH), top + p.rng.random() ** 0.7 * (HEIGHT - top)
        length = 4 + 12 * (y - top) / max(HEIGHT - top, 1)
        p.line(np.array([[x, y], [x + p.rng.uniform(-3, 3), y - length]]), texture or colour, 2)


def water(p: Painter, top: float, colour: RGB, bottom: float = HEIGHT, ripples: int = 40) -> None:
    """Still water: its colour, lighter lines of ripples, and a band reflecting the sky at the far edge."""
    p.rect(0, top, WIDTH, bottom, colour)
    reflection = p.haze(colour, 0.45)
    p.rect(0, top, WIDTH, top + 5, reflection)
    for _ in range(ripples):
        x, y = p.rng.uniform(0, WIDTH), p.rng.uniform(top + 6, bottom)
        half = 10 + 40 * (y - top) / max(bottom - top, 1)
        p.line(np.array([[x - half, y], [x + half, y]]), reflection, 1 + int(2 * (y - top) / max(bottom - top, 1)))


def pine(p: Painter, x: float, base: float, height: float, colour: RGB = (30, 90, 60), snow: bool = False) -> None:
    width = height * 0.42
    p.rect(x - width * 0.06, base - height * 0.12, x + width * 0.06, base, (80, 55, 35))
    for tier in range(3):
        bottom = base - height * (0.1 + 0.27 * tier)
        half = width * (0.5 - 0.12 * tier)
        p.fill(np.array([[x - half, bottom], [x + half, bottom], [x, bottom - height * 0.45]]), colour)
        if snow:
            p.fill(np.array([[x - half * 0.45, bottom - height * 0.25], [x + half * 0.45, bottom - height * 0.25],
                             [x, bottom - height * 0.45]]), (240, 245, 255))


def round_tree(p: Painter, x: float, base: float, height: float, colour: RGB = (60, 130, 50),
               fruit: RGB | None = None) -> None:
    """An oak or an apple tree: a trunk and a crown of overlapping discs (with fruit, if given)."""
    p.rect(x - height * 0.05, base - height * 0.55, x + height * 0.05, base, (95, 65, 40))
    crown = base - height * 0.65
    for _ in range(7):
        p.disc(x + p.rng.uniform(-0.25, 0.25) * height, crown + p.rng.uniform(-0.18, 0.12) * height,
               height * p.rng.uniform(0.16, 0.26), tuple(np.array(colour) * p.rng.uniform(0.85, 1.1)))
    for _ in range(14 if fruit else 0):
        p.disc(x + p.rng.uniform(-0.3, 0.3) * height, crown + p.rng.uniform(-0.2, 0.15) * height,
               max(2, height * 0.025), fruit)


def palm(p: Painter, x: float, base: float, height: float) -> None:
    top = np.array([x + height * 0.15, base - height])
    trunk = np.array([[x, base], [x + height * 0.08, base - height * 0.5], top])
    p.line(trunk, (110, 80, 50), max(3, int(height * 0.05)))
    for angle in np.linspace(0.2, np.pi - 0.2, 6):
        tip = top + np.array([np.cos(angle) * height * 0.45, -np.sin(angle) * height * 0.2 + height * 0.12])
        p.line(np.array([top, (top + tip) / 2 - [0, height * 0.05], tip]), (40, 130, 50), max(3, int(height * 0.04)))


def house(p: Painter, x: float, base: float, w: float, h: float, wall: RGB, roof: RGB,
          chimney: bool = True) -> None:
    """A house: walls, a pitched roof, a door, two windows (lit at dusk and at night), perhaps a chimney."""
    p.rect(x, base - h, x + w, base, wall)
    if chimney:
        p.rect(x + w * 0.65, base - h - h * 0.55, x + w * 0.78, base - h - h * 0.1, (120, 70, 60))
    p.fill(np.array([[x - w * 0.08, base - h], [x + w * 1.08, base - h], [x + w / 2, base - h - h * 0.6]]), roof)
    p.rect(x + w * 0.42, base - h * 0.45, x + w * 0.58, base, (90, 55, 35))
    for wx in (x + w * 0.14, x + w * 0.68):
        p.lamp(wx, base - h * 0.75, w * 0.18, h * 0.22)


def smoke(p: Painter, x: float, y: float) -> None:
    for i in range(5):
        p.disc(x + i * 6 + p.rng.uniform(-3, 3), y - i * 12, 5 + i * 2, p.haze((215, 215, 220), 0.3 + 0.1 * i))


def tower(p: Painter, x: float, base: float, w: float, h: float, stone: RGB, roof: RGB | None) -> None:
    """A round-looking castle tower: a shaft, crenellations or a cone roof, a lit slit window."""
    p.rect(x, base - h, x + w, base, stone)
    p.rect(x, base - h, x + w * 0.18, base, tuple(np.array(stone) * 0.8))   # its shaded side
    if roof:
        p.fill(np.array([[x - w * 0.12, base - h], [x + w * 1.12, base - h], [x + w / 2, base - h - w * 1.3]]), roof)
    else:
        crenellations(p, x, base - h, w, stone)
    p.lamp(x + w * 0.42, base - h * 0.7, w * 0.16, h * 0.12)


def crenellations(p: Painter, x: float, top: float, w: float, stone: RGB) -> None:
    teeth = max(2, int(w / 14))
    for i in range(teeth):
        p.rect(x + i * w / teeth, top - 10, x + i * w / teeth + w / teeth * 0.55, top, stone)


def clock_face(p: Painter, x: float, y: float, r: float) -> None:
    p.disc(x, y, r, (240, 235, 215))
    p.line(np.array([[x, y], [x, y - r * 0.8]]), (30, 30, 30), 2)
    p.line(np.array([[x, y], [x + r * 0.55, y + r * 0.2]]), (30, 30, 30), 2)


def boat(p: Painter, x: float, y: float, size: float, hull: RGB, sail: RGB | None = (245, 240, 225)) -> None:
    p.fill(np.array([[x - size, y - size * 0.3], [x + size, y - size * 0.3], [x + size * 0.7, y],
                     [x - size * 0.7, y]]), hull)
    if sail:
        p.line(np.array([[x, y - size * 0.3], [x, y - size * 1.6]]), (90, 70, 50), 2)
        p.fill(np.array([[x + 3, y - size * 1.55], [x + 3, y - size * 0.4], [x + size * 0.8, y - size * 0.4]]), sail)


def fence(p: Painter, y: float, colour: RGB = (130, 95, 60), x0: float = 0, x1: float = WIDTH) -> None:
    p.line(np.array([[x0, y - 18], [x1, y - 18]]), colour, 3)
    p.line(np.array([[x0, y - 8], [x1, y - 8]]), colour, 3)
    for x in np.arange(x0, x1, 34):
        p.rect(x, y - 28, x + 5, y, colour)


def flowers(p: Painter, top: float, count: int, colours: tuple[RGB, ...]) -> None:
    for _ in range(count):
        y = top + p.rng.random() ** 0.8 * (HEIGHT - top)
        p.disc(p.rng.uniform(0, WIDTH), y, 2 + 5 * (y - top) / max(HEIGHT - top, 1),
               colours[int(p.rng.integers(len(colours)))])


def glow(p: Painter, x: float, y: float, radius: float, colour: RGB) -> None:
    """A light source that shines by any light: a fire, a crystal, a lamp."""
    def shine(out: np.ndarray) -> None:
        halo = _soft_disc(x, y, radius, radius)[..., None] * 0.8 * np.array(colour, np.float32)
        cv2.add(out, cv2.resize(halo.astype(np.uint8), (WIDTH, HEIGHT)), out)
        cv2.circle(out, (int(x), int(y)), max(1, int(radius * 0.35)), colour, -1, cv2.LINE_AA)
    p.lamps.append(shine)


# -- finishing ------------------------------------------------------------------------------------------

def finish(p: Painter) -> np.ndarray:
    """The landscape lit and laid over the sky, lamps drawn, a soft bloom, a vignette and paper grain:
    RGB uint8. All in 8 bits with OpenCV's saturating arithmetic: a whole set paints in a second or two."""
    *land, alpha = cv2.split(p.land)
    lit_land = cv2.multiply(cv2.merge(land), (*p.light.ambient, 0))
    weight = alpha.astype(np.float32) / 255
    out = cv2.blendLinear(p.sky, lit_land, 1 - weight, weight)
    if p.lamps:
        lamps = np.zeros_like(out)
        for draw in p.lamps:
            draw(lamps)
        halo = cv2.GaussianBlur(cv2.resize(lamps, (WIDTH // 4, HEIGHT // 4), interpolation=cv2.INTER_AREA), (0, 0), 3)
        out = cv2.addWeighted(cv2.max(out, lamps), 1, cv2.resize(halo, (WIDTH, HEIGHT)), 0.9, 0)
    small = cv2.resize(out, (WIDTH // 4, HEIGHT // 4), interpolation=cv2.INTER_AREA)
    bloom = cv2.resize(cv2.GaussianBlur(cv2.subtract(small, (170, 170, 170, 0)), (0, 0), 4), (WIDTH, HEIGHT))
    out = cv2.GaussianBlur(cv2.addWeighted(out, 1, bloom, 0.6, 0), (3, 3), 0.8)
    return cv2.multiply(out, _paper(), scale=1 / 128)


@functools.lru_cache(maxsize=1)
def _paper() -> np.ndarray:
    """Paper grain (fine noise over a slow mottle) and a vignette, shared by every picture: 128 is 1.0."""
    rng = np.random.default_rng(7)
    fine = rng.normal(0, 0.03, (HEIGHT, WIDTH)).astype(np.float32)
    mottle = cv2.resize(rng.normal(0, 0.03, (HEIGHT // 30, WIDTH // 30)).astype(np.float32), (WIDTH, HEIGHT),
                        interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[-1:1:HEIGHT * 1j, -1:1:WIDTH * 1j].astype(np.float32)
    shade = 1 - 0.22 * (xs ** 2 * 0.7 + ys ** 2) ** 1.2
    paper = cv2.merge([np.clip((1 + fine + mottle) * shade * 128, 0, 255).astype(np.uint8)] * 3)
    paper.flags.writeable = False
    return paper
