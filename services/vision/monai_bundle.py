"""A MONAI bundle (e.g. spleen_ct_segmentation from the MONAI Model Zoo) as a segmentation model.

The bundle's own configuration decides everything the service does with a study: its network
(``network_def``), the weights in models/model.pt, the preprocessing it declares (Orientationd axcodes,
Spacingd pixdim, ScaleIntensityRanged window), its sliding-window inferer (roi_size, overlap,
sw_batch_size, mode) and the label names of its metadata (network_data_format.outputs.pred.channel_def).

Layout read (what `python -m monai.bundle download` leaves):

    <bundle>/configs/inference.json (or .yaml)   <bundle>/configs/metadata.json   <bundle>/models/model.pt

A bundle's configuration may hold Python expressions ("$...") that MONAI evaluates: point the service only at
bundles you trust, as you would any code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing

from services.vision.volume_model import RAS_LABELS, SegmentationSpec

INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
WEIGHTS = Path("models") / "model.pt"


@dataclass(frozen=True)
class MonaiBundle:
    network: torch.nn.Module
    spec: SegmentationSpec           # labels, axcodes, spacing, intensity window, roi_size, overlap
    preparation: Compose
    sw_batch_size: int
    blend_mode: str                  # the inferer's mode: "constant" (MONAI's default) or "gaussian"
    description: dict                # name, version, provenance


def is_bundle(path: Path) -> bool:
    return (path / "configs").is_dir() and any((path / "configs" / name).is_file() for name in INFERENCE_CONFIGS)


def read_bundle(path: Path, device: torch.device) -> MonaiBundle:
    config = next(path / "configs" / name for name in INFERENCE_CONFIGS if (path / "configs" / name).is_file())
    parser = ConfigParser()
    parser.read_config(str(config))
    metadata = path / "configs" / "metadata.json"
    if metadata.is_file():
        parser.read_meta(str(metadata))
    parser["bundle_root"] = str(path)
    network = parser.get_parsed_content("network_def" if "network_def" in parser else "network", instantiate=True)
    network.load_state_dict(_state_dict(torch.load(path / WEIGHTS, map_location=device, weights_only=True)))
    steps = _preprocessing(parser)
    inferer = _section(parser, "inferer")
    spec = SegmentationSpec(
        labels=_label_names(parser, _out_channels(network, parser)),
        axcodes=steps.get("axcodes", ""),
        spacing_mm=tuple(float(v) for v in steps.get("pixdim", ())),
        intensity_range=(float(steps.get("a_min", 0.0)), float(steps.get("a_max", 1.0))),
        roi_size=tuple(int(v) for v in inferer.get("roi_size", (96, 96, 96))),
        overlap=float(inferer.get("overlap", 0.25)),
    )
    meta = parser.get("_meta_", {}) or {}
    return MonaiBundle(
        network=network, spec=spec, preparation=_preparation(steps), sw_batch_size=int(inferer.get("sw_batch_size", 1)),
        blend_mode=str(inferer.get("mode", "constant")),
        description={"name": str(meta.get("name") or path.name), "version": str(meta.get("version", "unknown")),
                     "provenance": f"MONAI bundle at {path}" + (f": {meta['description']}" if meta.get("description")
                                                                 else "")})


def _state_dict(checkpoint: dict) -> dict:
    """models/model.pt holds the network's state dict, or a checkpoint dict with it under "model"."""
    for key in ("model", "state_dict", "network"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _section(parser: ConfigParser, key: str) -> dict:
    """A config section's arguments with references and expressions resolved, not instantiated."""
    if key not in parser:
        return {}
    names = [name for name in parser[key] if not name.startswith("_")]
    return {name: parser.get_parsed_content(f"{key}::{name}") for name in names}


def _preprocessing(parser: ConfigParser) -> dict:
    """The arguments of the preprocessing steps the service reproduces, by argument name."""
    if "preprocessing" not in parser:
        return {}
    wanted = {"Orientationd": ("axcodes",), "Spacingd": ("pixdim", "mode"),
              "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip")}
    steps = {}
    for i, transform in enumerate(parser["preprocessing"].get("transforms", [])):
        target = str(transform.get("_target_", "")).rsplit(".", 1)[-1]
        for name in wanted.get(target, ()):
            if name in transform:
                steps[name] = parser.get_parsed_content(f"preprocessing::transforms::{i}::{name}")
    return steps


def _preparation(steps: dict) -> Compose:
    transforms = []
    if steps.get("axcodes"):
        transforms.append(Orientation(axcodes=steps["axcodes"], labels=RAS_LABELS))
    if steps.get("pixdim") is not None:
        transforms.append(Spacing(pixdim=steps["pixdim"], mode=steps.get("mode", "bilinear")))
    if "a_min" in steps:
        transforms.append(ScaleIntensityRange(a_min=steps["a_min"], a_max=steps["a_max"], b_min=steps.get("b_min"),
                                              b_max=steps.get("b_max"), clip=bool(steps.get("clip", False))))
    return Compose(transforms)


def _out_channels(network: torch.nn.Module, parser: ConfigParser) -> int:
    declared = parser.get("network_def", {}) or {}
    if isinstance(declared, dict) and "out_channels" in declared:
        return int(parser.get_parsed_content("network_def::out_channels"))
    return int(getattr(network, "out_channels"))


def _label_names(parser: ConfigParser, channels: int) -> dict[int, str]:
    """Channel → name from the metadata's output channel_def; "class N" for any it leaves out."""
    outputs = ((parser.get("_meta_", {}) or {}).get("network_data_format", {}) or {}).get("outputs", {}) or {}
    declared = next(iter(outputs.values()), {}).get("channel_def", {}) if outputs else {}
    names = {0: "background"} | {int(k): str(v) for k, v in declared.items()}
    return {c: names.get(c, f"class {c}") for c in range(channels)}
