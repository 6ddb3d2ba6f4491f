"""Train the machine-sound anomaly autoencoder on synthetic healthy machines; set its threshold on
validation machines; report held-out AUC per fault kind on machines it never heard.

    .venv/bin/python scripts/train_machine_sound_model.py            # writes services/audio/models/machine-sound-autoencoder
    .venv/bin/python scripts/train_machine_sound_model.py --quick --out /tmp/msa   # a smoke run, seconds

Every seed is fixed: the machines of each split, the clips, the data order and the initial weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.audio.machine_sounds import FAULTS, machine_character, machine_sound  # noqa: E402
from services.audio.sound_anomaly import (MODEL_DIR, SAMPLE_RATE, Autoencoder, LogMel, LogMelSpec,  # noqa: E402
                                          clip_score, windows)

SEED = 20261128
ARCHITECTURE = {"hidden": 128, "bottleneck": 16}
THRESHOLD_QUANTILE = 0.99    # of validation healthy clips' scores: about 1% false alarms
SEVERITY_RANGE = (0.1, 1.0)  # held-out faults are drawn uniformly from this range
CLIP_SECONDS = 2.0


def clips(seed: int, machines: int, per_machine: int, fault: str | None = None) -> tuple[list[np.ndarray], list]:
    """``per_machine`` clips of each of ``machines`` new machines; faulty ones get a random severity."""
    rng = np.random.default_rng(seed)
    out, severities = [], []
    for _ in range(machines):
        character = machine_character(rng)
        for _ in range(per_machine):
            severity = float(rng.uniform(*SEVERITY_RANGE)) if fault else 0.0
            out.append(machine_sound(rng, CLIP_SECONDS, SAMPLE_RATE, fault, severity, machine=character))
            severities.append(severity)
    return out, severities


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Probability that a faulty clip scores above a healthy one (ties count half)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def score_clips(network: Autoencoder, log_mel: LogMel, spec: LogMelSpec, audio: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return np.array([clip_score(network.window_errors(torch.from_numpy(windows(log_mel(a), spec.context))).numpy(),
                                    spec.top_fraction) for a in audio])


def train(args) -> dict:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    spec = LogMelSpec()
    log_mel = LogMel(spec)
    started = time.monotonic()
    train_audio, _ = clips(SEED + 1, args.machines, args.clips_per_machine)
    x = torch.from_numpy(np.concatenate([windows(log_mel(a), spec.context) for a in train_audio]))
    network = Autoencoder(x.shape[1], **ARCHITECTURE)
    network.mean.copy_(x.mean(0))
    network.std.copy_(x.std(0).clamp(min=1e-3))
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    order = torch.Generator().manual_seed(SEED + 2)
    for epoch in range(args.epochs):
        permutation = torch.randperm(len(x), generator=order)
        total = 0.0
        for i in range(0, len(x), args.batch):
            loss = network.window_errors(x[permutation[i:i + args.batch]]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * min(args.batch, len(x) - i)
        schedule.step()
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / len(x):.4f}", flush=True)
    network.eval()
    train_s = time.monotonic() - started

    validation, _ = clips(SEED + 3, args.eval_machines, args.eval_clips)
    threshold = float(np.quantile(score_clips(network, log_mel, spec, validation), THRESHOLD_QUANTILE))
    held_out = evaluate(network, log_mel, spec, threshold, args)
    return {"network": network, "spec": spec, "threshold": threshold, "held_out": held_out,
            "train_windows": len(x), "train_clips": len(train_audio), "train_seconds": round(train_s, 1)}


def evaluate(network, log_mel, spec, threshold: float, args) -> dict:
    """AUC and detection rates on machines of a seed used nowhere else."""
    healthy, _ = clips(SEED + 4, args.eval_machines, args.eval_clips)
    negatives = score_clips(network, log_mel, spec, healthy)
    result = {"healthy_clips": len(healthy), "false_alarm_rate": round(float((negatives > threshold).mean()), 4),
              "severity_range": list(SEVERITY_RANGE), "faults": {}}
    all_positives = []
    for k, fault in enumerate(FAULTS):
        faulty, severities = clips(SEED + 10 + k, args.eval_machines, args.eval_clips, fault)
        positives = score_clips(network, log_mel, spec, faulty)
        all_positives.append(positives)
        severities = np.array(severities)
        low = severities < 0.4
        result["faults"][fault] = {
            "clips": len(faulty), "auc": round(auc(negatives, positives), 4),
            "auc_severity_below_0.4": round(auc(negatives, positives[low]), 4) if low.any() else None,
            "detection_rate": round(float((positives > threshold).mean()), 4)}
    result["auc_all"] = round(auc(negatives, np.concatenate(all_positives)), 4)
    return result


def save(out: Path, trained: dict, args, total_s: float) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    network = trained["network"]
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(out / "model.safetensors"))
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12]
    provenance = {
        "version": digest, "seed": SEED, "script": "scripts/train_machine_sound_model.py",
        "data": {"generator": "services/audio/machine_sounds.py", "sample_rate": SAMPLE_RATE,
                 "clip_seconds": CLIP_SECONDS, "train_machines": args.machines,
                 "train_clips": trained["train_clips"], "train_windows": trained["train_windows"],
                 "eval_machines_per_split": args.eval_machines, "eval_clips_per_machine": args.eval_clips},
        "log_mel": asdict(trained["spec"]), "architecture": ARCHITECTURE,
        "parameters": sum(p.numel() for p in network.parameters()),
        "training": {"epochs": args.epochs, "batch": args.batch, "optimizer": "AdamW lr 2e-3 cosine",
                     "seconds": trained["train_seconds"], "total_seconds": round(total_s, 1)},
        "threshold": trained["threshold"], "threshold_rule": f"{THRESHOLD_QUANTILE} quantile of validation healthy clips",
        "held_out": trained["held_out"],
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny data and few epochs: checks the script runs")
    parser.add_argument("--machines", type=int, default=40)
    parser.add_argument("--clips-per-machine", type=int, default=6)
    parser.add_argument("--eval-machines", type=int, default=40)
    parser.add_argument("--eval-clips", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.quick:
        args.machines, args.clips_per_machine, args.eval_machines, args.eval_clips, args.epochs = 4, 2, 4, 2, 2
    started = time.monotonic()
    trained = train(args)
    save(args.out, trained, args, time.monotonic() - started)
    print(json.dumps({"threshold": trained["threshold"], "held_out": trained["held_out"],
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
