"""NASA C-MAPSS turbofan data: a loader for the published files and a train-and-score command.

    python -m services.iot.cmapss train-eval --data DIR --subset FD001

reads DIR/train_FD001.txt, DIR/test_FD001.txt and DIR/RUL_FD001.txt (the files as NASA publishes
them; this project never downloads them), trains the remaining-life model family of
services/iot/remaining_life.py (the same 1-D CNN with point and quantile heads) on windows of the
latest cycles, and prints the RMSE and the PHM08 score on the last cycle of every test engine,
the way the literature reports them.

Format: whitespace-separated text, one row per engine per cycle, 26 numbers: unit number, cycle,
three operating settings, 21 sensor readings. `RUL_FD00x.txt` holds the true remaining cycles of
each test engine after its last row. Training targets use the usual piecewise-linear cap: an
engine's remaining life is counted as at most 125 cycles, since early wear is not visible.
Sensors that never change in the training file are dropped. Subsets with six operating conditions
(FD002, FD004) are standardised per condition (conditions found by rounding the settings).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("unit", "cycle", "setting_1", "setting_2", "setting_3") + tuple(f"sensor_{i}" for i in range(1, 22))
SUBSETS = ("FD001", "FD002", "FD003", "FD004")
RUL_CAP = 125
WINDOW = 30


class CmapssFormatError(ValueError):
    """A file that is not in the C-MAPSS format, with the file and line at fault."""


@dataclass(frozen=True)
class CmapssSubset:
    name: str
    train: np.ndarray      # [rows, 26]
    test: np.ndarray       # [rows, 26]
    test_rul: np.ndarray   # [test units]: true remaining cycles after each test engine's last row


def read_runs(path: Path) -> np.ndarray:
    """[rows, 26] of a train_ or test_ file, checked: 26 numbers a row, whole unit numbers from 1,
    cycles 1, 2, 3... per unit."""
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(COLUMNS):
            raise CmapssFormatError(f"{path}:{number}: {len(fields)} columns, C-MAPSS rows have {len(COLUMNS)} "
                                    "(unit, cycle, 3 settings, 21 sensors)")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise CmapssFormatError(f"{path}:{number}: not a number in {line.strip()[:80]!r}") from None
    if not rows:
        raise CmapssFormatError(f"{path}: no rows")
    data = np.array(rows)
    if not np.isfinite(data).all():
        raise CmapssFormatError(f"{path}: NaN or infinite values")
    units, cycles = data[:, 0], data[:, 1]
    if (units != np.round(units)).any() or (units < 1).any():
        raise CmapssFormatError(f"{path}: unit numbers must be whole and at least 1")
    for unit in np.unique(units):
        own = cycles[units == unit]
        if not np.array_equal(own, np.arange(1, len(own) + 1)):
            raise CmapssFormatError(f"{path}: unit {int(unit)}'s cycles are not 1, 2, 3, ... in order")
    return data


def read_rul(path: Path) -> np.ndarray:
    values = []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise CmapssFormatError(f"{path}:{number}: one number a line expected, found {len(fields)}")
        try:
            values.append(float(fields[0]))
        except ValueError:
            raise CmapssFormatError(f"{path}:{number}: not a number: {fields[0][:40]!r}") from None
    if not values or min(values) < 0:
        raise CmapssFormatError(f"{path}: needs one non-negative remaining life per test unit")
    return np.array(values)


def load_subset(data_dir: Path, subset: str) -> CmapssSubset:
    if subset not in SUBSETS:
        raise CmapssFormatError(f"unknown subset {subset!r}; one of {', '.join(SUBSETS)}")
    data_dir = Path(data_dir)
    train = read_runs(data_dir / f"train_{subset}.txt")
    test = read_runs(data_dir / f"test_{subset}.txt")
    rul = read_rul(data_dir / f"RUL_{subset}.txt")
    test_units = len(np.unique(test[:, 0]))
    if test_units != len(rul):
        raise CmapssFormatError(f"{data_dir / f'RUL_{subset}.txt'}: {len(rul)} values for {test_units} test units")
    return CmapssSubset(subset, train, test, rul)


def _lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise CmapssFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise CmapssFormatError(f"{path}: not a text file") from None


# -- preparation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preparation:
    """What training learned about the columns: which sensors move, and each condition's scale."""

    sensors: np.ndarray                   # column indices kept
    conditions: dict[tuple, tuple[np.ndarray, np.ndarray]]   # condition key -> (mean, std)

    @classmethod
    def fit(cls, train: np.ndarray) -> "Preparation":
        columns = np.arange(5, len(COLUMNS))
        sensors = columns[train[:, columns].std(axis=0) > 1e-6]
        keys = _condition_keys(train)
        conditions = {}
        for key in set(keys):
            rows = train[[k == key for k in keys]][:, sensors]
            conditions[key] = (rows.mean(axis=0), rows.std(axis=0) + 1e-6)
        return cls(sensors, conditions)

    def apply(self, data: np.ndarray) -> np.ndarray:
        out = np.empty((len(data), len(self.sensors)), dtype=np.float32)
        fallback = next(iter(self.conditions.values()))
        keys = _condition_keys(data)
        for key in set(keys):
            rows = np.array([k == key for k in keys])
            mean, std = self.conditions.get(key, fallback)
            out[rows] = (data[rows][:, self.sensors] - mean) / std
        return out


def _condition_keys(data: np.ndarray) -> list[tuple]:
    # FD002/FD004's six flight conditions sit at distinct settings; FD001/FD003 have one.
    rounded = np.round(data[:, 2:5] * np.array([1.0, 10.0, 0.01]))
    distinct = {tuple(r) for r in rounded}
    return [tuple(r) for r in rounded] if 1 < len(distinct) <= 12 else [()] * len(data)


def capped_rul(data: np.ndarray, cap: int = RUL_CAP) -> np.ndarray:
    """Per training row: cycles until its unit's last cycle, at most `cap`."""
    last = {u: data[data[:, 0] == u, 1].max() for u in np.unique(data[:, 0])}
    return np.minimum(np.array([last[u] for u in data[:, 0]]) - data[:, 1], cap).astype(np.float32)


def unit_windows(features: np.ndarray, units: np.ndarray, window: int, last_only: bool = False):
    """Windows of `window` cycles per unit (a short unit's first row repeated in front); the row index each ends at."""
    xs, ends = [], []
    for unit in np.unique(units):
        rows = np.flatnonzero(units == unit)
        own = features[rows]
        if len(own) < window:
            own = np.concatenate([np.repeat(own[:1], window - len(own), axis=0), own])
        padding = window - len(rows) if len(rows) < window else 0
        stops = [len(own)] if last_only else range(window, len(own) + 1)
        for stop in stops:
            xs.append(own[stop - window:stop])
            ends.append(rows[stop - padding - 1])
    return np.stack(xs), np.array(ends)


# -- train and evaluate ---------------------------------------------------------------------------

def phm08_score(d: np.ndarray) -> float:
    """The PHM08 challenge score, summed over engines, d = estimated - true RUL."""
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1, np.exp(d / 10.0) - 1)))


def train_eval(data: CmapssSubset, epochs: int = 40, seed: int = 7, window: int = WINDOW, cap: int = RUL_CAP,
               log=print) -> dict:
    from services.iot.remaining_life import fit, predict

    prep = Preparation.fit(data.train)
    train_x, ends = unit_windows(prep.apply(data.train), data.train[:, 0], window)
    train_y = capped_rul(data.train, cap)[ends]
    net, mean, std = fit(train_x, train_y, epochs, seed, scale=float(cap), log=log)
    test_x, _ = unit_windows(prep.apply(data.test), data.test[:, 0], window, last_only=True)
    estimate = predict(net, test_x, mean, std, 0.0, float(cap))[:, 0]
    truth = np.minimum(data.test_rul, cap)
    d = estimate - truth
    return {"subset": data.name, "train_units": int(len(np.unique(data.train[:, 0]))),
            "test_units": int(len(truth)), "window": window, "rul_cap": cap, "epochs": epochs,
            "rmse_cycles": round(float(np.sqrt(np.mean(d ** 2))), 2), "phm08_score": round(phm08_score(d), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.iot.cmapss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train-eval", help="train on train_FD00x.txt, score on test_FD00x.txt + RUL_FD00x.txt")
    run.add_argument("--data", type=Path, required=True, help="folder with the C-MAPSS text files")
    run.add_argument("--subset", default="FD001", choices=SUBSETS)
    run.add_argument("--epochs", type=int, default=40)
    run.add_argument("--window", type=int, default=WINDOW)
    run.add_argument("--seed", type=int, default=7)
    run.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        data = load_subset(args.data, args.subset)
    except CmapssFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = train_eval(data, epochs=args.epochs, seed=args.seed, window=args.window,
                        log=lambda line: print(line, file=sys.stderr))
    print(f"{result['subset']}: RMSE {result['rmse_cycles']} cycles, PHM08 score {result['phm08_score']} "
          f"on {result['test_units']} test engines (RUL capped at {result['rul_cap']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
