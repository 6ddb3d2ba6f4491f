"""Synthetic abdominal CT studies with their labels: organ (1) and a lesion inside it (2).

The anatomy is drawn in millimetres of a RAS+ patient frame centred on the body, then sampled on the
study's grid, so the same anatomy at another shape or spacing has the same structures (their volumes in
mL agree up to the sampling) and a longitudinal series of one patient is the same anatomy_seed with a
growing lesion_radius_mm. Segmentation is not a threshold: a second organ (spleen-like) has almost the
organ's intensity, the body wall, bowel, kidneys, aorta and spine surround it, the organ is an irregular
deformed ellipsoid, the lesion differs from it by a few tens of HU, and correlated noise and partial-volume
blur cover everything. The phantom is built on a RAS grid and reoriented to the requested axis codes
(voxels flipped and transposed, the affine adjusted), so "LPS" studies exercise a reader's reorientation.

Deterministic: the same arguments give the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from services.vision.volumes import Volume, axis_codes

ORGAN, LESION = 1, 2
# Hounsfield-like intensities of the tissues.
AIR, FAT, SOFT_TISSUE, BOWEL_GAS, BOWEL_FLUID = -1000.0, -100.0, 35.0, -800.0, 15.0
ORGAN_HU, SPLEEN_HU, KIDNEY_HU, AORTA_HU, BONE_HU, MARROW_HU = 62.0, 56.0, 150.0, 170.0, 700.0, 250.0
NOISE_HU = 12.0
# Partial-volume blur of the scanner, in millimetres (Gaussian sigma).
BLUR_MM = 0.8
# Lesion radius drawn from the seed when none is given; big enough for 2 mm voxels to resolve.
LESION_RADIUS_MM = (8.0, 20.0)
# Organ around the lesion's centre, whatever the lesion's size: room for a 20 mm lesion and its wobble.
LESION_CORE_MM = 26.0


@dataclass(frozen=True)
class Phantom:
    volume: Volume           # voxels in Hounsfield-like units
    labels: np.ndarray       # uint8 [i, j, k]: 0 background, 1 organ, 2 lesion (inside the organ)


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray       # mm, RAS
    half_axes: np.ndarray    # mm, along the rotated x, y, z
    angle: float = 0.0       # rotation about z, radians

    def level(self, x, y, z):
        """< 1 inside: the squared normalised distance from the centre."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (u / self.half_axes[0]) ** 2 + (v / self.half_axes[1]) ** 2 + (dz / self.half_axes[2]) ** 2


@dataclass(frozen=True)
class Wobble:
    """A smooth random field (a few long sine waves) that deforms a shape's surface."""
    waves: np.ndarray        # [n, 3] wave vectors, radians per mm
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, wavelength_mm: float, amplitude: float, n: int = 6) -> Wobble:
        directions = rng.normal(size=(n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = wavelength_mm * rng.uniform(0.7, 1.4, n)
        return cls(directions * (2 * np.pi / lengths)[:, None], rng.uniform(0, 2 * np.pi, n),
                   rng.uniform(0.5, 1.0, n) * amplitude / np.sqrt(n))

    def __call__(self, x, y, z):
        # sin(wx x + wy y + wz z + phase) is the imaginary part of a product of three 1-D complex
        # exponentials: on broadcast grid axes that costs one full-size product per wave, not a full-size sine.
        field = 0.0
        for (wx, wy, wz), phase, amplitude in zip(self.waves, self.phases, self.amplitudes):
            plane = np.exp(1j * wx * x).astype(np.complex64) * np.exp(1j * wy * y).astype(np.complex64)
            wave = plane * np.exp(1j * (wz * z + phase)).astype(np.complex64)
            field = field + np.float32(amplitude) * wave.imag
        return field


@dataclass(frozen=True)
class Anatomy:
    """Everything anatomy_seed fixes, in mm of the RAS frame centred on the body."""
    body: Ellipsoid
    fat_layer_mm: float
    body_wobble: Wobble
    organ: Ellipsoid
    organ_wobble: Wobble
    lesion_centre: np.ndarray
    lesion_wobble: Wobble
    lesion_radius_mm: float
    lesion_hu: float
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, Ellipsoid]
    bowel: tuple[tuple[Ellipsoid, float], ...]
    fat_blobs: tuple[Ellipsoid, ...]
    aorta: tuple[float, float, float]      # x, y, radius
    spine: tuple[float, float, float]      # x, y, radius of the vertebral body

    @classmethod
    def draw(cls, seed: int) -> Anatomy:
        rng = np.random.default_rng([seed, 0])
        jitter = lambda scale, n=3: rng.uniform(-scale, scale, n)   # noqa: E731
        body = Ellipsoid(np.zeros(3), np.array([84.0, 64.0, 1e6]) + jitter(5) * [1, 1, 0])
        organ = Ellipsoid(np.array([30.0, 4.0, 0.0]) + jitter(4) * [1, 1, 2.5],
                          np.array([29.0, 29.0, 40.0]) * rng.uniform(0.88, 1.1, 3), rng.uniform(-0.3, 0.3))
        # The lesion sits inside the organ, clear of the aorta, spine and body wall at every radius drawn.
        lesion_centre = np.array([rng.uniform(30, 36), organ.centre[1] + rng.uniform(-5, 5),
                                  organ.centre[2] + rng.uniform(-8, 8)])
        return cls(
            body=body, fat_layer_mm=rng.uniform(8, 16), body_wobble=Wobble.draw(rng, 90, 0.03),
            organ=organ, organ_wobble=Wobble.draw(rng, 70, 0.35),
            lesion_centre=lesion_centre, lesion_wobble=Wobble.draw(rng, 25, 0.08),
            lesion_radius_mm=float(rng.uniform(*LESION_RADIUS_MM)),
            # Hypodense or hyperdense, half each, always a modest contrast.
            lesion_hu=ORGAN_HU + rng.choice([-1, 1]) * rng.uniform(30, 45),
            spleen=Ellipsoid(np.array([-52.0, -18.0, 25.0]) + jitter(4), np.array([20.0, 26.0, 35.0])
                             * rng.uniform(0.85, 1.15, 3), rng.uniform(-0.4, 0.4)),
            kidneys=(Ellipsoid(np.array([-42.0, -36.0, -35.0]) + jitter(4), np.array([16.0, 13.0, 38.0])),
                     Ellipsoid(np.array([42.0, -36.0, -70.0]) + jitter(4), np.array([16.0, 13.0, 38.0]))),
            bowel=tuple((Ellipsoid(np.array([rng.uniform(-45, 5), rng.uniform(0, 45), rng.uniform(-80, 60)]),
                                   rng.uniform(8, 20, 3), rng.uniform(0, np.pi)),
                         float(rng.choice([BOWEL_GAS, BOWEL_FLUID]))) for _ in range(6)),
            fat_blobs=tuple(Ellipsoid(np.array([rng.uniform(-60, 60), rng.uniform(-40, 45), rng.uniform(-90, 90)]),
                                      rng.uniform(6, 16, 3), rng.uniform(0, np.pi)) for _ in range(10)),
            aorta=(-12.0 + rng.uniform(-3, 3), -22.0 + rng.uniform(-3, 3), rng.uniform(9, 11)),
            spine=(rng.uniform(-2, 2), -46.0 + rng.uniform(-3, 3), rng.uniform(14, 17)),
        )


def make_phantom(anatomy_seed: int, shape=(96, 96, 96), spacing_mm=(2.0, 2.0, 2.0), *,
                 lesion_radius_mm: float | None = None, noise_seed: int | None = None,
                 orientation: str = "RAS") -> Phantom:
    """A study of anatomy_seed's patient on a grid of shape and spacing (along i, j, k) in these axis codes.

    The field of view is shape * spacing, centred on the body. lesion_radius_mm None draws it from the seed;
    noise_seed None derives the noise from anatomy_seed.
    """
    codes = axis_codes(orientation, "orientation")
    anatomy = Anatomy.draw(anatomy_seed)
    radius = anatomy.lesion_radius_mm if lesion_radius_mm is None else float(lesion_radius_mm)
    # The RAS grid: RAS axis a is the study's axis that carries the letter of the same pair.
    order = [next(column for column, code in enumerate(codes) if code in pair) for pair in ("RL", "AP", "SI")]
    ras_shape = tuple(int(shape[c]) for c in order)
    ras_spacing = np.array([float(spacing_mm[c]) for c in order])
    ras_affine = np.diag([*ras_spacing, 1.0])
    ras_affine[:3, 3] = -(np.array(ras_shape) - 1) / 2 * ras_spacing
    x, y, z = (((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s).reshape([-1 if a == b else 1 for b in range(3)])
               for a, (n, s) in enumerate(zip(ras_shape, ras_spacing)))
    hu, labels = paint(anatomy, radius, x, y, z, ras_shape)
    noise_rng = np.random.default_rng([anatomy_seed if noise_seed is None else noise_seed, 1])
    hu = scanned(hu, ras_spacing, noise_rng)
    return reoriented(hu, labels, ras_affine, codes)


def paint(anatomy: Anatomy, lesion_radius_mm: float, x, y, z, shape) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant HU and the labels, painted tissue by tissue (later tissues cover earlier ones)."""
    hu = np.full(shape, AIR, dtype=np.float32)
    outline = 1 + anatomy.body_wobble(x, y, z)
    body = anatomy.body.level(x, y, z) < outline
    hu[body] = FAT
    inner = Ellipsoid(anatomy.body.centre, anatomy.body.half_axes - np.array([1, 1, 0]) * anatomy.fat_layer_mm)
    inside = body & (inner.level(x, y, z) < outline)
    hu[inside] = SOFT_TISSUE
    for blob in anatomy.fat_blobs:
        hu[inside & (blob.level(x, y, z) < 1)] = FAT
    for loop, value in anatomy.bowel:
        hu[inside & (loop.level(x, y, z) < 1)] = value
    for kidney in anatomy.kidneys:
        hu[inside & (kidney.level(x, y, z) < 1)] = KIDNEY_HU
    hu[inside & (anatomy.spleen.level(x, y, z) < 1)] = SPLEEN_HU
    # The organ always holds a core around the lesion's centre, so a lesion of any drawn size is surrounded
    # by organ and grows without being cut; the core does not depend on the lesion's size.
    core = (x - anatomy.lesion_centre[0]) ** 2 + (y - anatomy.lesion_centre[1]) ** 2 \
        + (z - anatomy.lesion_centre[2]) ** 2 < LESION_CORE_MM ** 2
    organ = inside & ((anatomy.organ.level(x, y, z) < 1 + anatomy.organ_wobble(x, y, z)) | core)
    # Texture: slow variations of a few HU inside the organ.
    hu[organ] = (ORGAN_HU + 4 * np.sin(0.11 * x + 0.07 * y + 0.05 * z) * np.ones(shape, np.float32))[organ]
    lesion = organ & lesion_mask(anatomy, lesion_radius_mm, x, y, z, shape)
    hu[lesion] = anatomy.lesion_hu
    aorta_x, aorta_y, aorta_r = anatomy.aorta
    aorta = inside & ((x - aorta_x) ** 2 + (y - aorta_y) ** 2 < aorta_r ** 2)
    hu[aorta] = AORTA_HU
    spine = inside & spine_body(anatomy, x, y, z)
    hu[spine] = MARROW_HU
    hu[spine & ~ndimage.binary_erosion(spine, iterations=1)] = BONE_HU
    labels = np.zeros(shape, dtype=np.uint8)
    labels[organ & ~aorta & ~spine] = ORGAN
    labels[lesion & ~aorta & ~spine] = LESION
    return hu, labels


def lesion_mask(anatomy: Anatomy, radius_mm: float, x, y, z, shape) -> np.ndarray:
    """The lesion's voxels, computed only in the box that can hold them (its wobble is costly per voxel)."""
    reach = radius_mm * 1.5 + 1
    box = tuple(slice(*np.searchsorted(axis.ravel(), [centre - reach, centre + reach]))
                for axis, centre in zip((x, y, z), anatomy.lesion_centre))
    mask = np.zeros(shape, dtype=bool)
    mask[box] = lesion_distance(anatomy, x[box[0]], y[:, box[1]], z[:, :, box[2]]) < radius_mm
    return mask


def lesion_distance(anatomy: Anatomy, x, y, z):
    """mm from the lesion's centre, shrunk or stretched by its wobble: a lumpy sphere that scales with radius."""
    dx, dy, dz = (x - anatomy.lesion_centre[0], y - anatomy.lesion_centre[1], z - anatomy.lesion_centre[2])
    distance = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
    # The wobble is evaluated on the direction, so the shape is the same at every radius.
    unit = distance + 1e-6
    return distance * (1 + anatomy.lesion_wobble(30 * dx / unit, 30 * dy / unit, 30 * dz / unit))


def spine_body(anatomy: Anatomy, x, y, z):
    """Vertebral bodies: discs (soft) every 30 mm along z, bone between."""
    spine_x, spine_y, radius = anatomy.spine
    column = (x - spine_x) ** 2 + (y - spine_y) ** 2 < radius ** 2
    return column & (np.mod(z + 500.0, 30.0) > 6.0)


def scanned(hu: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur and correlated noise, both sized in mm so they look alike at every spacing."""
    blurred = ndimage.gaussian_filter(hu, sigma=BLUR_MM / spacing, mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), sigma=0.6)
    noise *= NOISE_HU / max(float(noise.std()), 1e-6)
    return (blurred + noise).astype(np.float32)


def reoriented(hu: np.ndarray, labels: np.ndarray, ras_affine: np.ndarray, codes: str) -> Phantom:
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(tuple(codes)))
    affine = ras_affine @ nib.orientations.inv_ornt_aff(transform, hu.shape)
    voxels = np.ascontiguousarray(nib.orientations.apply_orientation(hu, transform), dtype=np.float32)
    labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform), dtype=np.uint8)
    return Phantom(volume=Volume(voxels=voxels, affine=affine), labels=labels)
