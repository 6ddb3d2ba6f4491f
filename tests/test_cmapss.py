"""The C-MAPSS loader and train-eval command, on files written here in the published 26-column format.

The engines of the synthetic subset degrade the way C-MAPSS engines do (a wear index that grows
toward the end of life and shows in 14 of the 21 sensors, 7 sensors constant), so a model that
learned the pattern reaches a small RMSE on the test engines, and one that did not cannot.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.iot import cmapss

REPO = Path(__file__).resolve().parents[1]
CONSTANT_SENSORS = (1, 5, 6, 10, 16, 18, 19)


def engine(rng: np.random.Generator, unit: int, life: int, cycles: int) -> list[list[float]]:
    gains = np.linspace(-2.0, 3.0, 21)
    rows = []
    for cycle in range(1, cycles + 1):
        wear = np.exp(-(life - cycle) / 35.0)            # visible in the last ~100 cycles
        settings = rng.normal(0, [0.002, 0.0003, 0.0])
        sensors = 100 + np.arange(21) * 10 + gains * 6 * wear + rng.normal(0, 0.15, 21)
        for s in CONSTANT_SENSORS:
            sensors[s - 1] = 100 + (s - 1) * 10
        rows.append([unit, cycle, *settings, *sensors])
    return rows


def write_subset(folder: Path, seed: int = 3, train_units: int = 30, test_units: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    train = []
    for unit in range(1, train_units + 1):
        life = int(rng.integers(150, 260))
        train += engine(rng, unit, life, life)
    test, truth = [], []
    for unit in range(1, test_units + 1):
        life = int(rng.integers(150, 260))
        seen = int(rng.integers(40, life - 5))
        test += engine(rng, unit, life, seen)
        truth.append(life - seen)
    fmt = ["%d", "%d", "%.4f", "%.4f", "%.1f"] + ["%.2f"] * 21
    np.savetxt(folder / "train_FD001.txt", np.array(train), fmt=fmt, delimiter=" ")
    np.savetxt(folder / "test_FD001.txt", np.array(test), fmt=fmt, delimiter=" ")
    np.savetxt(folder / "RUL_FD001.txt", np.array(truth), fmt="%d")
    return np.array(truth)


def test_reads_the_published_layout(tmp_path):
    truth = write_subset(tmp_path)
    data = cmapss.load_subset(tmp_path, "FD001")
    assert data.train.shape[1] == 26 and data.test.shape[1] == 26
    assert len(np.unique(data.test[:, 0])) == len(data.test_rul) == len(truth)
    capped = cmapss.capped_rul(data.train)
    assert capped.max() == cmapss.RUL_CAP and capped.min() == 0
    prep = cmapss.Preparation.fit(data.train)
    assert set(prep.sensors - 4) == set(range(1, 22)) - set(CONSTANT_SENSORS)   # constant sensors dropped


@pytest.mark.slow
def test_train_eval_command_scores_the_test_engines(tmp_path):
    write_subset(tmp_path)
    command = [sys.executable, "-m", "services.iot.cmapss", "train-eval", "--data", str(tmp_path),
               "--subset", "FD001", "--epochs", "10", "--threads", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary, record = result.stdout.strip().splitlines()[-2:]
    assert summary.startswith("FD001: RMSE")
    import json
    scores = json.loads(record)
    assert scores["test_units"] == 20
    # Degradation shows in the last ~100 cycles: a model that learned it is well inside the
    # literature's FD001 range; predicting the mean capped RUL would score about 40.
    assert scores["rmse_cycles"] < 15, scores


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace(" ", " 1 ", 1), "27 columns"),
    (lambda text: text.replace("1 1 ", "1 x ", 1), "not a number"),
    (lambda text: "\n".join(text.splitlines()[1:]), "cycles are not 1, 2, 3"),
    (lambda text: "", "no rows"),
])
def test_bad_files_get_a_clear_error(tmp_path, damage, message):
    write_subset(tmp_path, train_units=3, test_units=2)
    path = tmp_path / "train_FD001.txt"
    path.write_text(damage(path.read_text()))
    with pytest.raises(cmapss.CmapssFormatError, match=message) as error:
        cmapss.load_subset(tmp_path, "FD001")
    assert "train_FD001.txt" in str(error.value) or message == "no rows"


def test_rul_file_must_match_the_test_units(tmp_path):
    write_subset(tmp_path, train_units=3, test_units=2)
    (tmp_path / "RUL_FD001.txt").write_text("10\n20\n30\n")
    with pytest.raises(cmapss.CmapssFormatError, match="3 values for 2 test units"):
        cmapss.load_subset(tmp_path, "FD001")


def test_command_reports_a_missing_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "services.iot.cmapss", "train-eval", "--data", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "train_FD001.txt: no such file" in result.stderr
