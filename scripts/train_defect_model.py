"""Train the surface-defect segmentation model on synthetic surfaces and score it on held-out ones.

    .venv/bin/python scripts/train_defect_model.py                # writes services/vision/models/surface-defects
    .venv/bin/python scripts/train_defect_model.py --quick --out /tmp/defects   # smoke run, ~20 s

Data: services/vision/textures.py draws brushed-metal, cast, woven and painted surfaces with scratches,
spots and cracks, and their masks. Training images and held-out images come from different seeds, so
no held-out surface or defect was seen in training. The model (services/vision/inspection.TinyUNet)
learns a class per pixel on random crops; the held-out score runs the full images through the same
post-processing the service uses (connected components → defects) and counts:

- defects (instances): a found defect is right when it lies mostly (>= 30% of its pixels, 2 px of
  tolerance) on a true defect of the same class; a true defect is found when a right defect lies on it.
- images: an image fails inspection when its defect score reaches 0.5; it should when it has a defect.

Every seed is fixed; provenance.json records seeds, data, steps, scores, time and library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.vision.inspection import (CLOSE_KERNEL, MIN_DEFECT_PIXELS, MODELS_DIR, PROVENANCE_FILE,  # noqa: E402
                                        SURFACE_DEFECTS, WEIGHTS_FILE, TinyUNet, defects_from_probabilities,
                                        normalize)
from services.vision.textures import CLASSES, DEFECT_KINDS, product_image, sample_defects  # noqa: E402

SEED = 20261127
TRAIN_SEED, HELDOUT_SEED, HELDOUT_LARGE_SEED = SEED, SEED + 1, SEED + 2
DEFECT_PROBABILITY = 0.7
# Cross-entropy weights: defect pixels are rare, and a missed thin line costs more than a fat border.
CLASS_WEIGHTS = (1.0, 4.0, 2.0, 4.0)
MATCH_FRACTION = 0.3
VERDICT_THRESHOLD = 0.5
POST_PROCESSING = {"min_defect_pixels": MIN_DEFECT_PIXELS, "closing_kernel": CLOSE_KERNEL,
                   "chosen_on": "validation images of other seeds (999 + image side), not the held-out ones"}


def make_images(seed: int, count: int, size: int):
    rng = np.random.default_rng(seed)
    return [product_image(rng, size, defects=sample_defects(rng, DEFECT_PROBABILITY)) for _ in range(count)]


def random_crops(rng: np.random.Generator, samples, batch: int, crop: int):
    """A batch of crops with random flips and quarter turns (label-preserving for every defect).

    Crops of whole normalized images, as the service normalizes whole images: a crop normalized on
    its own would centre on its own brightness and teach the model nothing about uneven light.
    """
    images, masks = [], []
    for _ in range(batch):
        sample = samples[int(rng.integers(len(samples)))]
        h, w = sample.mask.shape
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        image = normalize(sample.image[None])[0, :, y:y + crop, x:x + crop]
        mask = sample.mask[y:y + crop, x:x + crop]
        turns = int(rng.integers(4))
        image, mask = np.rot90(image, turns, axes=(1, 2)), np.rot90(mask, turns)
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        images.append(np.ascontiguousarray(image))
        masks.append(np.ascontiguousarray(mask))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.int64))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the defect classes: keeps thin defects from being drowned by the background."""
    probabilities = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target, len(CLASSES)).permute(0, 3, 1, 2)[:, 1:].float()
    intersection = (probabilities * onehot).sum((0, 2, 3))
    total = probabilities.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * intersection + 1) / (total + 1)).mean()


def train(samples, args) -> TinyUNet:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = TinyUNet(width=args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    weights = torch.tensor(CLASS_WEIGHTS)
    model.train()
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        x, y = random_crops(rng, samples, args.batch, args.crop)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=weights) + dice_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    return model.eval()


@torch.inference_mode()
def inspect_all(model: TinyUNet, samples, batch: int = 16):
    out = []
    for i in range(0, len(samples), batch):
        images = np.stack([s.image for s in samples[i:i + batch]])
        probabilities = torch.softmax(model(torch.from_numpy(normalize(images))), 1).numpy()
        out += [defects_from_probabilities(p) for p in probabilities]
    return out


def _prf(tp_pred: int, predicted: int, tp_true: int, true: int) -> dict:
    precision = tp_pred / predicted if predicted else 1.0
    recall = tp_true / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "predicted": predicted, "true": true}


def match_instances(sample, inspection) -> tuple[list[tuple[str, bool]], list[tuple[str, bool, float]]]:
    """(found defects as (class, right)), (true defects as (class, found, box IoU with what found it))."""
    true_near = cv2.dilate(sample.instances, np.ones((5, 5), np.uint8))   # 2 px of tolerance
    count, components = cv2.connectedComponents((inspection.mask > 0).astype(np.uint8), connectivity=8)
    found, hits = [], {}
    for c in range(1, count):
        pixels = components == c
        kind = CLASSES[int(np.bincount(inspection.mask[pixels]).argmax())]
        under = np.bincount(true_near[pixels], minlength=len(sample.defects) + 1)[1:]
        j = int(under.argmax()) if under.size else -1
        right = j >= 0 and under[j] >= MATCH_FRACTION * pixels.sum() and sample.defects[j].kind == kind
        found.append((kind, right))
        if right:
            hits.setdefault(j, []).append(cv2.boundingRect(pixels.astype(np.uint8)))
    true = []
    for j, defect in enumerate(sample.defects):
        iou = box_iou(defect.box, union_box(hits[j])) if j in hits else 0.0
        true.append((defect.kind, j in hits, iou))
    return found, true


def union_box(boxes):
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def box_iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def evaluate(samples, inspections) -> dict:
    found, true = [], []
    for sample, inspection in zip(samples, inspections):
        f, t = match_instances(sample, inspection)
        found += f
        true += t
    instances = {}
    for kind in (*DEFECT_KINDS, None):
        fk = [right for k, right in found if kind in (None, k)]
        tk = [hit for k, hit, _ in true if kind in (None, k)]
        instances[kind or "overall"] = _prf(sum(fk), len(fk), sum(tk), len(tk))
    ious = [iou for _, hit, iou in true if hit]
    defective = [bool(s.defects) for s in samples]
    failed = [i.defect_score >= VERDICT_THRESHOLD for i in inspections]
    tp = sum(d and f for d, f in zip(defective, failed))
    images = _prf(tp, sum(failed), tp, sum(defective))
    images["accuracy"] = round(sum(d == f for d, f in zip(defective, failed)) / len(samples), 4)
    return {"images": len(samples), "instances": instances, "image_verdicts": images,
            "mean_box_iou_of_found": round(float(np.mean(ious)), 4) if ious else 0.0}


def save(model: TinyUNet, out: Path, provenance: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def rescore(out: Path, heldout, heldout_large) -> int:
    from safetensors.torch import load_file

    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    model = TinyUNet(width=provenance["width"])
    model.load_state_dict(load_file(str(out / WEIGHTS_FILE)))
    model.eval()
    provenance["heldout"] = evaluate(heldout, inspect_all(model, heldout))
    provenance["heldout_256px"] = evaluate(heldout_large, inspect_all(model, heldout_large))
    provenance["post_processing"] = POST_PROCESSING
    print(json.dumps({"heldout_128px": provenance["heldout"], "heldout_256px": provenance["heldout_256px"]}, indent=2))
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=MODELS_DIR / SURFACE_DEFECTS)
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--heldout-images", type=int, default=300)
    p.add_argument("--heldout-large-images", type=int, default=60, help="held-out images at 256 px")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=1,
                   help="1 by default: on a small shared machine a second OpenMP thread waits more than it works")
    p.add_argument("--quick", action="store_true", help="a smoke run: few images and steps")
    p.add_argument("--rescore", action="store_true",
                   help="score the weights already in --out again (after a change of post-processing)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_images, args.heldout_images, args.heldout_large_images, args.steps = 100, 30, 10, 20
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    started = time.monotonic()
    print(f"drawing {args.train_images} training and {args.heldout_images} + {args.heldout_large_images} "
          "held-out images ...", flush=True)
    training = make_images(TRAIN_SEED, args.train_images, 128)
    heldout = make_images(HELDOUT_SEED, args.heldout_images, 128)
    heldout_large = make_images(HELDOUT_LARGE_SEED, args.heldout_large_images, 256)
    if args.rescore:
        return rescore(args.out, heldout, heldout_large)
    model = train(training, args)
    train_s = time.monotonic() - started
    scores = evaluate(heldout, inspect_all(model, heldout))
    scores_large = evaluate(heldout_large, inspect_all(model, heldout_large))
    print(json.dumps({"heldout_128px": scores, "heldout_256px": scores_large}, indent=2))
    provenance = {
        "model": SURFACE_DEFECTS, "architecture": "TinyUNet", "width": args.width, "classes": list(CLASSES),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": SEED, "seeds": {"train": TRAIN_SEED, "heldout": HELDOUT_SEED, "heldout_large": HELDOUT_LARGE_SEED},
        "data": {"generator": "services/vision/textures.py", "train_images": args.train_images, "image_size": 128,
                 "defect_probability": DEFECT_PROBABILITY, "crop": args.crop},
        "training": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "AdamW + OneCycle",
                     "loss": f"cross-entropy (weights {list(CLASS_WEIGHTS)}) + soft Dice",
                     "seconds": round(train_s, 1), "threads": args.threads},
        "heldout": scores, "heldout_256px": scores_large, "post_processing": POST_PROCESSING,
        "match_rule": f"found defect right when >= {MATCH_FRACTION:.0%} of its pixels lie within 2 px of a true "
                      f"defect of its class; image fails at defect score >= {VERDICT_THRESHOLD}",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "numpy": np.__version__, "opencv": cv2.__version__},
    }
    save(model, args.out, provenance)
    print(f"wrote {args.out} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
