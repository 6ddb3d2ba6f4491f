"""The machine-sound training script runs end to end (a quick run), writes a model the service's adapter
loads, and the committed model meets its held-out bar."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from services.audio.machine_sounds import FAULTS, machine_sound
from services.audio.sound_anomaly import MODEL_DIR, MachineSoundScorer
from services.runtime.settings import REPO_ROOT


@pytest.mark.slow
def test_quick_training_run_writes_a_loadable_model(tmp_path):
    out = tmp_path / "model"
    subprocess.run([sys.executable, "scripts/train_machine_sound_model.py", "--quick", "--out", str(out)],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance["held_out"]["faults"]) == set(FAULTS) and provenance["threshold"] > 0
    scorer = MachineSoundScorer(out, threads=1)
    scorer.load()
    [result] = scorer.run_batch([machine_sound(1, 1.0, 16000)])
    assert np.isfinite(result.score) and result.log_mel.shape[0] == 64


def test_committed_model_meets_the_held_out_bar():
    provenance = json.loads((MODEL_DIR / "provenance.json").read_text())
    faults = provenance["held_out"]["faults"]
    assert all(faults[f]["auc"] >= 0.9 for f in FAULTS), faults
    assert provenance["held_out"]["false_alarm_rate"] <= 0.05
    scorer = MachineSoundScorer(MODEL_DIR, threads=1)
    scorer.load()
    assert scorer.describe().version == provenance["version"]
    healthy, faulty = scorer.run_batch([machine_sound(99, 2.0, 16000), machine_sound(99, 2.0, 16000, "rubbing", 0.9)])
    assert healthy.score < scorer.threshold < faulty.score
