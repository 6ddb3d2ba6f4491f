"""Train the 3D segmentation model (abdomen-phantom) on synthetic CT phantoms and score it on held-out ones.

The trained model is small and committed (services/vision/models/abdomen-phantom: model.safetensors and
provenance.json); this script reproduces it on the CPU with fixed seeds:

    nice .venv/bin/python scripts/train_segmentation_model.py                  # writes the packaged model
    .venv/bin/python scripts/train_segmentation_model.py --quick --out /tmp/abdomen   # smoke run, ~25 s

Data: services/vision/phantoms.py draws abdominal CT studies (body, fat, bowel, kidneys, a spleen of nearly
the organ's intensity, aorta, spine) with an organ (label 1) and a lesion inside it (label 2). Training
studies come from seeds 1000+ on several grids and orientations; they are prepared exactly as the service
prepares a study (SegmentationSpec's preparation: reorientation, resampling, intensity window), their labels
resampled the same way with nearest neighbours. The network (build_network) learns from random 48^3 crops,
30% centred on a lesion voxel, the rest anywhere; no flips, since left and right tell
the organ from the spleen.

Held-out: seeds 9000+ on grids (96^3 and 256x256x128) whose spacings were not used in training, in RAS and
LPS, segmented the way the service does (services/vision/segmentation.py): the whole prepared study through
sliding_window_inference with the spec's roi and overlap, argmax, labels mapped back to the study's own grid,
then Dice per label there, and lesion Dice by lesion radius. Nothing is chosen on the held-out studies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.transforms import Compose, Orientation, Spacing  # noqa: E402

from services.vision.phantoms import LESION, LESION_RADIUS_MM, ORGAN, Anatomy, Phantom, make_phantom  # noqa: E402
from services.vision.segmentation import (ABDOMEN_PHANTOM, MODELS_DIR, PROVENANCE_FILE, WEIGHTS_FILE,  # noqa: E402
                                          to_study_grid)
from services.vision.volume_model import (RAS_LABELS, SegmentationSpec, as_meta_tensor, build_network,  # noqa: E402
                                          preparation)

SEED = 20261128
TRAIN_SEED = 1000
HELDOUT_SEED = 9000
# (shape, spacing in mm, axis codes) of the training studies, used in turn.
TRAIN_GRIDS = (
    ((96, 96, 96), (2.0, 2.0, 2.0), "RAS"),
    ((112, 112, 80), (1.7, 1.7, 2.5), "LPS"),
    ((128, 128, 96), (1.5, 1.5, 2.0), "LAS"),
    ((80, 80, 64), (2.5, 2.5, 3.0), "RPI"),
)
# Training lesions span a little more than the radii the phantoms draw, so the edges are not rare.
TRAIN_LESION_RADIUS_MM = (6.0, 22.0)
HELDOUT_GRIDS = (
    ((96, 96, 96), (2.2, 2.2, 2.2), "LPS"),
    ((96, 96, 96), (1.9, 1.9, 2.1), "RAS"),
    ((256, 256, 128), (1.4, 1.4, 2.2), "LPS"),
    ((256, 256, 128), (0.9, 0.9, 1.8), "RAS"),
)
# Lesion radii (mm) by which held-out lesion Dice is reported.
RADIUS_BINS = ((8, 12), (12, 16), (16, 20))
# Shares of the crops centred on a lesion voxel, an organ voxel, and anywhere. None on the organ alone: with a
# fifth of them there, the organ was over-represented against whole studies and came out ~4% too large.
CROP_CENTRES = (0.3, 0.0, 0.7)


def prepared_study(phantom: Phantom, spec: SegmentationSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The study as the service prepares it, and its labels on the same grid (nearest neighbour)."""
    image = preparation(spec)(as_meta_tensor(phantom.volume.voxels, phantom.volume.affine))
    labels = labels_on_grid(spec, phantom)
    assert image.shape == labels.shape, (image.shape, labels.shape)
    return image.as_tensor().float(), labels.as_tensor().round().to(torch.uint8)


def labels_on_grid(spec: SegmentationSpec, phantom: Phantom):
    """The labels on the prepared grid: the preparation's reorientation and resampling, nearest neighbour."""
    grid = Compose([Orientation(axcodes=spec.axcodes, labels=RAS_LABELS),
                    Spacing(pixdim=spec.spacing_mm, mode="nearest")])
    return grid(as_meta_tensor(phantom.labels, phantom.volume.affine))


def training_studies(count: int, spec: SegmentationSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(SEED)
    studies = []
    for n in range(count):
        shape, spacing, codes = TRAIN_GRIDS[n % len(TRAIN_GRIDS)]
        phantom = make_phantom(TRAIN_SEED + n, shape, spacing, orientation=codes,
                               lesion_radius_mm=float(rng.uniform(*TRAIN_LESION_RADIUS_MM)))
        studies.append(prepared_study(phantom, spec))
    return studies


def random_crops(rng: np.random.Generator, studies, batch: int, roi: tuple[int, int, int]):
    """A batch of cubic crops (zero-padded where a study is smaller), centred by CROP_CENTRES."""
    images, labels = [], []
    for _ in range(batch):
        image, label = studies[int(rng.integers(len(studies)))]
        kind = rng.choice(3, p=CROP_CENTRES)
        candidates = torch.nonzero(label[0] == (LESION, ORGAN)[kind]) if kind < 2 else None
        if candidates is not None and len(candidates):
            centre = candidates[int(rng.integers(len(candidates)))].numpy()
        else:
            centre = np.array([rng.integers(0, n) for n in label.shape[1:]])
        starts = [int(np.clip(c - r // 2 + rng.integers(-r // 4, r // 4 + 1), min(0, n - r), max(0, n - r)))
                  for c, r, n in zip(centre, roi, label.shape[1:])]
        images.append(crop(image, starts, roi))
        labels.append(crop(label, starts, roi))
    return torch.stack(images), torch.stack(labels).long()


def crop(volume: torch.Tensor, starts, roi) -> torch.Tensor:
    """[C, *roi] from volume [C, i, j, k] at starts (negative: the study is smaller; pad with zeros)."""
    out = torch.zeros((volume.shape[0], *roi), dtype=volume.dtype)
    source = tuple(slice(max(s, 0), min(s + r, n)) for s, r, n in zip(starts, roi, volume.shape[1:]))
    target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, starts))
    out[(slice(None), *target)] = volume[(slice(None), *source)]
    return out


def train(studies, spec: SegmentationSpec, args) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED + 1)
    network = build_network(spec)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    loss_of = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = []
    network.train()
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        x, y = random_crops(rng, studies, args.batch, (args.crop,) * 3)
        optimizer.zero_grad()
        loss = loss_of(network(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss))
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {np.mean(losses[-20:]):.4f}  {time.monotonic() - started:.0f} s",
                  flush=True)
    return network.eval(), losses


def heldout_cases(count_per_grid: int) -> list[tuple[int, tuple, tuple, str]]:
    return [(HELDOUT_SEED + 100 * g + n, shape, spacing, codes)
            for g, (shape, spacing, codes) in enumerate(HELDOUT_GRIDS) for n in range(count_per_grid)]


@torch.inference_mode()
def segment(network: torch.nn.Module, spec: SegmentationSpec, phantom: Phantom) -> np.ndarray:
    """Labels on the study's own grid, the way services/vision/segmentation.py computes them."""
    prepared = preparation(spec)(as_meta_tensor(phantom.volume.voxels, phantom.volume.affine))
    probabilities = sliding_window_inference(prepared[None].as_tensor(), spec.roi_size, 4, network,
                                             overlap=spec.overlap, mode="gaussian")
    grid_labels = probabilities[0].argmax(0).to(torch.uint8).numpy()
    return to_study_grid(grid_labels, np.asarray(prepared.affine, np.float64), phantom.labels.shape,
                         phantom.volume.affine)


def resampled_truth(spec: SegmentationSpec, phantom: Phantom) -> np.ndarray:
    """The true labels taken to the prepared grid and back as the service maps labels: the best any network
    working on that grid can score on the study's grid (below 1 where the study's voxels are much finer)."""
    grid_labels = labels_on_grid(spec, phantom)
    return to_study_grid(grid_labels[0].numpy().round().astype(np.uint8), np.asarray(grid_labels.affine, np.float64),
                         phantom.labels.shape, phantom.volume.affine)


def dice(predicted: np.ndarray, truth: np.ndarray, label: int) -> float:
    a, b = predicted == label, truth == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def evaluate(network, spec: SegmentationSpec, count_per_grid: int) -> dict:
    rows = []
    for seed, shape, spacing, codes in heldout_cases(count_per_grid):
        phantom = make_phantom(seed, shape, spacing, orientation=codes)
        labels = segment(network, spec, phantom)
        ceiling = resampled_truth(spec, phantom)
        radius = round(float(lesion_radius_of(seed)), 1)
        row = {"seed": seed, "shape": list(shape), "spacing_mm": list(spacing), "orientation": codes,
               "lesion_radius_mm": radius, "organ": round(dice(labels, phantom.labels, ORGAN), 4),
               "lesion": round(dice(labels, phantom.labels, LESION), 4),
               "ceiling": {"organ": round(dice(ceiling, phantom.labels, ORGAN), 4),
                           "lesion": round(dice(ceiling, phantom.labels, LESION), 4)}}
        print(f"held-out {row}", flush=True)
        rows.append(row)
    by_size = {}
    for low, high in RADIUS_BINS:
        scores = [r["lesion"] for r in rows if low <= r["lesion_radius_mm"] < high or
                  (high == RADIUS_BINS[-1][1] and r["lesion_radius_mm"] == high)]
        by_size[f"{low}-{high} mm"] = {"studies": len(scores), "lesion": round(float(np.mean(scores)), 4)
                                       if scores else None}
    by_grid = {}
    for shape, spacing, codes in HELDOUT_GRIDS:
        chosen = [r for r in rows if r["shape"] == list(shape) and r["spacing_mm"] == list(spacing)]
        by_grid[f"{'x'.join(map(str, shape))} at {'x'.join(map(str, spacing))} mm {codes}"] = {
            **{name: round(float(np.mean([r[name] for r in chosen])), 4) for name in ("organ", "lesion")},
            "ceiling": {name: round(float(np.mean([r["ceiling"][name] for r in chosen])), 4)
                        for name in ("organ", "lesion")}}
    return {
        "dice": {name: round(float(np.mean([r[name] for r in rows])), 4) for name in ("organ", "lesion")},
        "dice_min": {name: round(float(np.min([r[name] for r in rows])), 4) for name in ("organ", "lesion")},
        "lesion_dice_by_radius": by_size,
        "dice_by_grid": by_grid,
        "seeds": sorted({r["seed"] for r in rows}),
        "grids": [{"shape": list(s), "spacing_mm": list(p), "orientation": c} for s, p, c in HELDOUT_GRIDS],
        "lesion_radius_mm": list(LESION_RADIUS_MM),
        "studies": rows,
    }


def lesion_radius_of(seed: int) -> float:
    """The radius make_phantom draws for this seed when none is given."""
    return Anatomy.draw(seed).lesion_radius_mm


def save(network, spec: SegmentationSpec, out: Path, training: dict, heldout: dict) -> dict:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    provenance = {
        "name": ABDOMEN_PHANTOM,
        "version": hashlib.sha256(weights.read_bytes()).hexdigest()[:12],
        "spec": spec.to_json(),
        "training": training,
        "heldout": heldout,
        "provenance": "trained by scripts/train_segmentation_model.py on synthetic phantoms "
                      "(services/vision/phantoms.py); not for clinical use",
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    return provenance


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=MODELS_DIR / ABDOMEN_PHANTOM)
    p.add_argument("--studies", type=int, default=64, help="training studies")
    p.add_argument("--steps", type=int, default=3200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=48, help="side of the training crops (inference uses the spec's roi)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--heldout-per-grid", type=int, default=4)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads; one on purpose: on a shared 2-core machine two were three times slower")
    p.add_argument("--quick", action="store_true", help="a smoke run: few studies, steps and held-out studies")
    args = p.parse_args(argv)
    if args.quick:
        args.studies, args.steps, args.heldout_per_grid = 4, 20, 1
    torch.set_num_threads(args.threads)
    np.random.seed(SEED)
    spec = SegmentationSpec()
    started = time.monotonic()
    studies = training_studies(args.studies, spec)
    prepared_s = time.monotonic() - started
    print(f"{len(studies)} training studies prepared in {prepared_s:.0f} s", flush=True)
    network, losses = train(studies, spec, args)
    seconds = time.monotonic() - started
    training = {
        "script": "scripts/train_segmentation_model.py" + (" --quick" if args.quick else ""),
        "seed": SEED, "seeds": f"{TRAIN_SEED}..{TRAIN_SEED + args.studies - 1}", "volumes": args.studies,
        "grids": [{"shape": list(s), "spacing_mm": list(p), "orientation": c} for s, p, c in TRAIN_GRIDS],
        "lesion_radius_mm": list(TRAIN_LESION_RADIUS_MM), "crop_centres": dict(zip(("lesion", "organ", "anywhere"),
                                                                                   CROP_CENTRES)),
        "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr, "optimizer": "Adam + OneCycle",
        "loss": "DiceCELoss (softmax, background included)", "final_loss": round(float(np.mean(losses[-20:])), 4),
        "seconds": round(seconds), "data_seconds": round(prepared_s), "threads": args.threads,
        "parameters": sum(p.numel() for p in network.parameters()),
        "torch": torch.__version__, "monai": __import__("monai").__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    }
    evaluating = time.monotonic()
    heldout = evaluate(network, spec, args.heldout_per_grid)
    heldout["seconds"] = round(time.monotonic() - evaluating)
    provenance = save(network, spec, args.out, training, heldout)
    print(json.dumps({k: provenance["heldout"][k] for k in ("dice", "dice_min", "lesion_dice_by_radius",
                                                            "dice_by_grid")}, indent=1))
    print(f"wrote {args.out} (version {provenance['version']}) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
