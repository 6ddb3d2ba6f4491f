"""What a 3D segmentation network expects: its label map, grid, intensity window and architecture.

One place shared by the training script (scripts/train_segmentation_model.py) and the service
(services/vision/segmentation.py), so a study is prepared for inference exactly as the training
volumes were. The spec of a trained model is stored in the provenance.json beside its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing


# Axis codes name the positive direction of each axis (nibabel's and MONAI's RAS+ convention); said explicitly,
# as MONAI deprecates the implicit default.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class SegmentationSpec:
    # Label value → structure name; 0 is background.
    labels: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "organ", 2: "lesion"})
    # Studies are reoriented to these axis codes and resampled to this spacing before the network.
    axcodes: str = "RAS"
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    # Intensities (e.g. Hounsfield units) in this window map linearly to [0, 1]; outside it they clip.
    intensity_range: tuple[float, float] = (-200.0, 300.0)
    # Sliding-window inference: window size in voxels of the resampled grid, and overlap.
    roi_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.25
    # monai.networks.nets.UNet arguments.
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    # Batch norm (as MONAI's spleen_ct_segmentation): at inference it uses the running statistics of training,
    # so a window of mostly air is normalised like any other; instance norm would renormalise every window.
    norm: str = "batch"

    @property
    def classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict:
        spec = asdict(self)
        spec["labels"] = {str(k): v for k, v in self.labels.items()}
        return spec

    @classmethod
    def from_json(cls, data: dict) -> SegmentationSpec:
        data = dict(data)
        data["labels"] = {int(k): v for k, v in data["labels"].items()}
        for name in ("spacing_mm", "intensity_range", "roi_size", "channels", "strides"):
            data[name] = tuple(data[name])
        return cls(**data)


def build_network(spec: SegmentationSpec) -> torch.nn.Module:
    return UNet(spatial_dims=3, in_channels=1, out_channels=spec.classes, channels=spec.channels,
                strides=spec.strides, num_res_units=spec.num_res_units, norm=spec.norm)


def preparation(spec: SegmentationSpec) -> Compose:
    """Channel-first MetaTensor [1, i, j, k] with its affine → the network's grid and intensity scale."""
    low, high = spec.intensity_range
    return Compose([
        Orientation(axcodes=spec.axcodes, labels=RAS_LABELS),
        Spacing(pixdim=spec.spacing_mm, mode="bilinear"),
        ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
    ])


def as_meta_tensor(voxels: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """[i, j, k] voxels and their voxel-to-RAS affine → the channel-first MetaTensor MONAI's transforms take."""
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(voxels, dtype=np.float32))[None],
                      affine=torch.as_tensor(affine, dtype=torch.float64))
