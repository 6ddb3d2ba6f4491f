"""Segmentation model folders for tests: a trained-model folder with random weights, and a tiny MONAI bundle in
the layout of the Model Zoo's spleen_ct_segmentation. Both load through the service's own paths."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.vision.volume_model import SegmentationSpec, build_network

# Small enough that a window costs milliseconds on a CPU.
TINY_SPEC = SegmentationSpec(roi_size=(48, 48, 48), channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def write_random_model(folder: Path, spec: SegmentationSpec = TINY_SPEC, seed: int = 0) -> Path:
    """model.safetensors + provenance.json as scripts/train_segmentation_model.py writes them, untrained."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in build_network(spec).state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "provenance.json").write_text(json.dumps({
        "name": "random-test-model", "version": f"seed-{seed}", "spec": spec.to_json(),
        "provenance": "random weights written by tests/segmentation_models.py", "heldout": {}}))
    return folder


def write_tiny_bundle(folder: Path, seed: int = 0, pixdim=(2.0, 2.0, 2.5), window=(-57, 164),
                      roi=(48, 48, 48)) -> Path:
    """configs/inference.json, configs/metadata.json and models/model.pt, as spleen_ct_segmentation has them
    (the same transforms and inferer, its label map), with a small UNet of random weights."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                   "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2, "norm": "batch"}
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window[0], "a_max": window[1],
             "b_min": 0, "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 4, "overlap": 0.5},
    }
    metadata = {
        "version": "0.0.1-test", "name": "Tiny spleen-layout bundle",
        "description": "random weights in the layout of spleen_ct_segmentation",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "channel_def": {"0": "background", "1": "spleen"}}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    arguments = {k: v for k, v in network_def.items() if k != "_target_"}
    torch.save(UNet(**arguments).state_dict(), folder / "models" / "model.pt")
    return folder
