"""Surface inspection: a small UNet segments defects; connected components of its mask become defects.

The network is trained by scripts/train_defect_model.py on synthetic surfaces (services/vision/textures.py)
and ships in services/vision/models/surface-defects/ (weights in safetensors, provenance.json beside them).
It is fully convolutional: it runs on images of any size, at their own resolution, so a 1-pixel scratch is
never resized away.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from services.runtime.adapter import ModelAdapter, ModelDescription, TensorSpec
from services.runtime.devices import configure_threads, pick_device
from services.vision.images import ImageLimits
from services.vision.textures import CLASSES, DEFECT_KINDS

SURFACE_DEFECTS = "surface-defects"
MODELS_DIR = Path(__file__).resolve().parent / "models"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "provenance.json"

# Post-processing for weights whose provenance.json does not say (see PostProcessing).
MIN_DEFECT_PIXELS = 16
CLOSE_KERNEL = 3
# Pixels run through the network at once: its activations take ~100 bytes a pixel, so a batch of
# large images is split rather than allocating gigabytes.
BATCH_PIXELS = 4 * 1024 * 1024
PIXEL_SCALE = 32.0


class TinyUNet(nn.Module):
    """``depth`` poolings, skip connections, a class per pixel: 67k parameters at width 12 and depth 2,
    276k at depth 3 (a receptive field of about 90 px instead of 40: enough to see where a line ends)."""

    def __init__(self, width: int = 12, classes: int = len(CLASSES), depth: int = 2):
        super().__init__()
        self.depth = depth
        widths = [width * 2 ** level for level in range(depth + 1)]
        for level in range(1, depth + 1):
            self.add_module(f"enc{level}", _block(3 if level == 1 else widths[level - 2], widths[level - 1]))
            self.add_module(f"dec{level}", _block(widths[level] + widths[level - 1], widths[level - 1]))
        self.bottom = _block(widths[depth - 1], widths[depth])
        self.head = nn.Conv2d(width, classes, 1)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this: every pooling halves the side."""
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(1, self.depth + 1):
            x = getattr(self, f"enc{level}")(x if level == 1 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = self.bottom(nn.functional.max_pool2d(x, 2))
        for level in range(self.depth, 0, -1):
            x = getattr(self, f"dec{level}")(torch.cat([nn.functional.interpolate(x, scale_factor=2.0),
                                                        skips[level - 1]], 1))
        return self.head(x)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def normalize(images: np.ndarray, window: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W], each image and channel centred on its mean.

    The mean per image, so paint colour and overall brightness do not matter; a fixed scale, not the
    image's own spread, so the faint shading of a smooth painted part is not inflated into a stain.
    ``window`` (a crop of ``images``) is returned instead, centred on the whole images' means: training
    crops see the same values the service gives the whole image.
    """
    mean = images.mean(axis=(1, 2), dtype=np.float32)[:, :, None, None]
    x = (images if window is None else window).astype(np.float32).transpose(0, 3, 1, 2)
    return (x - mean) / PIXEL_SCALE


@dataclass(frozen=True)
class FoundDefect:
    kind: str
    box: tuple[int, int, int, int]   # x, y, width, height
    score: float                     # highest defect probability inside it
    pixels: int


@dataclass(frozen=True)
class Inspection:
    mask: np.ndarray               # uint8 [H, W] class ids of CLASSES
    defects: list[FoundDefect]
    defect_score: float            # highest score of a defect, 0 when there is none


@dataclass(frozen=True)
class PostProcessing:
    """How regions of defect pixels become defects. The training script chooses these on validation
    images (never the held-out ones) and records them in provenance.json beside the weights."""

    close_kernel: int = CLOSE_KERNEL          # gaps narrower than this inside one defect are closed
    min_pixels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEFECT_KINDS, MIN_DEFECT_PIXELS))
    min_score: float = 0.0                    # a region whose most certain pixel is below this is noise

    def keeps(self, defect: FoundDefect) -> bool:
        return defect.pixels >= self.min_pixels[defect.kind] and defect.score >= self.min_score

    @classmethod
    def from_provenance(cls, provenance: dict) -> PostProcessing:
        chosen = provenance.get("post_processing", {})
        minimum = chosen.get("min_defect_pixels", MIN_DEFECT_PIXELS)
        return cls(close_kernel=int(chosen.get("closing_kernel", CLOSE_KERNEL)),
                   min_pixels={kind: int(minimum[kind] if isinstance(minimum, dict) else minimum)
                               for kind in DEFECT_KINDS},
                   min_score=float(chosen.get("min_score", 0.0)))


def candidate_regions(probabilities: np.ndarray, close_kernel: int = CLOSE_KERNEL
                      ) -> tuple[np.ndarray, list[FoundDefect]]:
    """[C, H, W] class probabilities → (component ids [H, W], one FoundDefect per component, unfiltered).

    A component's class is the defect class with the most probability mass inside it, so a crack
    whose pixels are split between "crack" and "scratch" is still one crack.
    """
    defect = (probabilities.argmax(0) > 0).astype(np.uint8)
    # Close small gaps so a thin line the model sees in pieces stays one defect.
    defect = cv2.morphologyEx(defect, cv2.MORPH_CLOSE, np.ones((close_kernel, close_kernel), np.uint8))
    count, components, stats, _ = cv2.connectedComponentsWithStats(defect, connectivity=8)
    defect_probability = 1.0 - probabilities[0]
    regions = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        inside = components[y:y + h, x:x + w] == i
        mass = probabilities[1:, y:y + h, x:x + w][:, inside].sum(axis=1)
        score = float(defect_probability[y:y + h, x:x + w][inside].max())
        regions.append(FoundDefect(DEFECT_KINDS[int(mass.argmax())], (x, y, w, h), score, area))
    return components, regions


def defects_from_probabilities(probabilities: np.ndarray, post: PostProcessing = PostProcessing()) -> Inspection:
    """[C, H, W] class probabilities → mask, and one defect per region of defect pixels that ``post`` keeps."""
    components, regions = candidate_regions(probabilities, post.close_kernel)
    mask = np.zeros(components.shape, np.uint8)
    found = []
    for i, region in enumerate(regions, start=1):
        if not post.keeps(region):
            continue
        x, y, w, h = region.box
        mask[y:y + h, x:x + w][components[y:y + h, x:x + w] == i] = CLASSES.index(region.kind)
        found.append(region)
    found.sort(key=lambda d: -d.score)
    return Inspection(mask, found, max((d.score for d in found), default=0.0))


def _heldout_f1(provenance: dict) -> str:
    """"0.951 at 128 px, 0.930 at 256 px" from the scores the training script recorded."""
    scores = [(key.removeprefix("heldout_").removesuffix("px"), value["instances"]["overall"]["f1"])
              for key, value in provenance.items() if key.startswith("heldout_") and key.endswith("px")]
    return ", ".join(f"{f1:.3f} at {side} px" for side, f1 in scores) or "not recorded"


class SurfaceDefectModel(ModelAdapter):
    """Rows: uint8 RGB images [H, W, 3] of any size. Results: one Inspection per row."""

    # Open Inference Protocol view: a batch of same-size RGB images in; class masks and scores out.
    inputs = (TensorSpec("IMAGE", "UINT8", (-1, -1, 3)),)
    outputs = (TensorSpec("MASK", "UINT8", (-1, -1)), TensorSpec("DEFECT_SCORE", "FP32", (1,)))

    def __init__(self, path: Path | str = MODELS_DIR / SURFACE_DEFECTS, device: str = "auto", threads: int = 0,
                 instances: int = 1, limits: ImageLimits = ImageLimits()):
        self.path = Path(path)
        self.limits = limits
        self.device = pick_device(device)
        self.threads = threads
        self.instances = instances
        self.network: TinyUNet | None = None
        self.post_processing = PostProcessing()
        self._description: ModelDescription | None = None

    def load(self) -> None:
        from safetensors.torch import load_file

        configure_threads(self.threads, self.instances)
        provenance = json.loads((self.path / PROVENANCE_FILE).read_text())
        weights = self.path / WEIGHTS_FILE
        self.network = TinyUNet(width=int(provenance["width"]), depth=int(provenance.get("depth", 2)))
        self.network.load_state_dict(load_file(str(weights)))
        self.network.to(self.device).eval()
        self.post_processing = PostProcessing.from_provenance(provenance)
        self._description = ModelDescription(
            name=SURFACE_DEFECTS,
            version=hashlib.sha256(weights.read_bytes()).hexdigest()[:12],
            provenance=(f"trained by scripts/train_defect_model.py on synthetic surfaces (seed {provenance['seed']}); "
                        f"held-out defect F1 {_heldout_f1(provenance)}"),
            device=str(self.device), dtype="float32")

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.run_batch([rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(4)])

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.network = None

    def run_batch(self, rows: Sequence[np.ndarray]) -> list[Inspection]:
        """Rows of one size run as one tensor (up to BATCH_PIXELS); other sizes run as separate groups."""
        results: list[Inspection | None] = [None] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.shape, []).append(i)
        for shape, indices in groups.items():
            chunk = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                for i, p in zip(part, self.probabilities(np.stack([rows[i] for i in part]))):
                    results[i] = defects_from_probabilities(p, self.post_processing)
        return results

    def rows_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = tensors["IMAGE"]
        self.limits.check(images.shape[2], images.shape[1], "IMAGE")
        return list(images)

    def tensors_from_results(self, results: Sequence[Inspection]) -> dict[str, np.ndarray]:
        return {"MASK": np.stack([r.mask for r in results]),
                "DEFECT_SCORE": np.array([[r.defect_score] for r in results], np.float32)}

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, C, H, W] class probabilities."""
        n, h, w, _ = images.shape
        x = torch.from_numpy(normalize(images)).to(self.device)
        pad_h, pad_w = -h % self.network.size_multiple, -w % self.network.size_multiple
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        logits = self.network(x)[:, :, :h, :w]
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
