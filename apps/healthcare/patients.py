"""The patient twin: what it holds and how a study, a vitals reading or a note changes it.

A patient twin (definition ``modalmesh:patient:1``) is keyed by a pseudonym ("PT-4F2A9C") and holds
only the attributes context needs (sex, birth year). Its features:

- ``imaging``: every study (acquired when, per-structure volume and voxel count, label names, the
  model and its provenance), the latest volumes, and each structure's growth rate in mL/month;
- ``vitals``: the latest reading and the anomalous periods IoTService found;
- ``notes``: summaries of clinical notes, typed or dictated;
- ``findings``: what a rule raised, e.g. a lesion that grew past the threshold between two studies.

Collections are objects keyed by id, never arrays: a JSON merge patch then adds one entry and leaves
the others alone, so each event of the twin's history says exactly what changed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from apps.twins import Twin, finite, now_ms

DEFINITION = "modalmesh:patient:1"
IMAGING, VITALS, NOTES, FINDINGS = "imaging", "vitals", "notes", "findings"
SEXES = ("female", "male", "other", "unknown")
MS_PER_MONTH = 30.4375 * 24 * 3600 * 1000   # a mean Gregorian month


def new_pseudonym() -> str:
    """A random pseudonymous id: it says nothing about the person."""
    return "PT-" + secrets.token_hex(3).upper()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def attributes(sex: str, birth_year: int) -> dict:
    if sex not in SEXES:
        raise ValueError(f"sex is one of {', '.join(SEXES)}")
    if not 1900 <= birth_year <= 2100:
        raise ValueError("birth_year is between 1900 and 2100")
    return {"sex": sex, "birthYear": birth_year}


def model_record(model) -> dict:
    """Which model gave a result, and where its weights came from."""
    return {"name": model.name, "version": model.version, "provenance": model.provenance,
            "device": model.device, "dtype": model.dtype}


@dataclass(frozen=True)
class GrowthRule:
    """A finding when a watched structure grows by at least ``min_increase_fraction`` of its previous
    volume, and by at least ``min_increase_ml`` (so noise on a tiny lesion raises nothing), between a
    study and the one acquired before it; a watched structure appearing where there was none counts
    once it reaches ``min_increase_ml``."""

    structures: tuple[str, ...] = ("lesion",)
    min_increase_fraction: float = 0.2
    min_increase_ml: float = 0.1

    def describe(self) -> str:
        return (f"{'/'.join(self.structures)} volume up by >= {self.min_increase_fraction:.0%} and "
                f">= {self.min_increase_ml:g} mL since the previous study")

    def grew(self, previous_ml: float, current_ml: float) -> bool:
        increase = current_ml - previous_ml
        if increase < self.min_increase_ml:
            return False
        return previous_ml <= 0 or increase / previous_ml >= self.min_increase_fraction


# -- imaging -------------------------------------------------------------------------------------

def study_record(acquired_ms: int, result, source: str) -> dict:
    """One study as the twin keeps it, from SegmentVolume's SegmentationResult."""
    structures = {}
    for s in result.structures:
        box = s.bounding_box
        structures[s.name] = {"label": s.label, "volumeMl": finite(s.volume_ml), "voxelCount": s.voxel_count,
                              "boundingBox": [list(box.min_index), list(box.max_index)] if box.min_index else None}
    geometry = result.geometry
    return {"acquiredMs": acquired_ms, "ingestedMs": now_ms(), "source": source, "structures": structures,
            "labelNames": {str(k): v for k, v in sorted(result.label_names.items())},
            "geometry": {"shape": list(geometry.shape), "spacingMm": [finite(v) for v in geometry.spacing_mm],
                         "orientation": geometry.orientation},
            "model": model_record(result.model)}


def studies_in_order(twin: Twin, extra: dict | None = None) -> list[tuple[str, dict]]:
    """The twin's studies (and ``extra``: id → record) by acquisition time, oldest first."""
    studies = dict(twin.reported(IMAGING).get("studies", {}))
    studies.update(extra or {})
    return sorted(studies.items(), key=lambda item: (item[1]["acquiredMs"], item[0]))


def volumes(study: dict) -> dict[str, float]:
    return {name: s["volumeMl"] for name, s in study["structures"].items() if s.get("volumeMl") is not None}


def growth_rates(ordered: list[tuple[str, dict]]) -> dict[str, float]:
    """Per structure, the least-squares slope of its volume over time across all studies, in mL/month."""
    series: dict[str, list[tuple[float, float]]] = {}
    for _, study in ordered:
        for name, volume in volumes(study).items():
            series.setdefault(name, []).append((study["acquiredMs"] / MS_PER_MONTH, volume))
    rates = {}
    for name, points in series.items():
        months = [m for m, _ in points]
        if len(points) < 2 or max(months) == min(months):
            continue
        mean_m, mean_v = sum(months) / len(points), sum(v for _, v in points) / len(points)
        slope = (sum((m - mean_m) * (v - mean_v) for m, v in points) / sum((m - mean_m) ** 2 for m in months))
        rates[name] = finite(slope)
    return rates


def imaging_patch(twin: Twin, study_id: str, study: dict, rule: GrowthRule) -> dict:
    """The one patch an ingested study makes: the study, the latest volumes and growth rates, and a
    finding if a watched structure grew past the rule since the study acquired before it."""
    ordered = studies_in_order(twin, {study_id: study})
    latest_id, latest = ordered[-1]
    imaging = {"studies": {study_id: study}, "studyCount": len(ordered), "growthMlPerMonth": growth_rates(ordered),
               "latest": {"studyId": latest_id, "acquiredMs": latest["acquiredMs"], "volumesMl": volumes(latest)}}
    patch = {"features": {IMAGING: {"properties": imaging}}}
    findings = growth_findings(ordered, study_id, rule)
    if findings:
        patch["features"][FINDINGS] = {"properties": {"items": findings}}
    return patch


def growth_findings(ordered: list[tuple[str, dict]], study_id: str, rule: GrowthRule) -> dict:
    """Findings of the new study against the one before it (none for a patient's first study)."""
    position = [sid for sid, _ in ordered].index(study_id)
    if position == 0:
        return {}
    previous_id, previous = ordered[position - 1]
    current = ordered[position][1]
    before, after = volumes(previous), volumes(current)
    findings = {}
    for name in rule.structures:
        if name in after and rule.grew(before.get(name, 0.0), after[name]):
            from_ml = before.get(name, 0.0)
            finding = {
                "kind": f"{name}-growth", "structure": name, "studyId": study_id, "previousStudyId": previous_id,
                "fromMl": from_ml, "toMl": after[name],
                "months": finite((current["acquiredMs"] - previous["acquiredMs"]) / MS_PER_MONTH, 2),
                "rule": rule.describe(), "raisedMs": now_ms(), "status": "open"}
            if from_ml > 0:   # a structure that appeared has no relative increase
                finding["increase"] = finite((after[name] - from_ml) / from_ml, 3)
            findings[new_id("F")] = finding
    return findings


def open_findings(twin: Twin) -> dict[str, dict]:
    items = twin.reported(FINDINGS).get("items", {})
    return {fid: f for fid, f in items.items() if f.get("status") == "open"}


def volume_series(twin: Twin) -> tuple[list[int], dict[str, list[float | None]]]:
    """Acquisition times and, per structure, its volume at each study: the plot of volumes over time."""
    ordered = studies_in_order(twin)
    times = [study["acquiredMs"] for _, study in ordered]
    names = sorted({name for _, study in ordered for name in volumes(study)})
    return times, {name: [volumes(study).get(name) for _, study in ordered] for name in names}


# -- a summary for the patient list and the API ----------------------------------------------------

def summary(twin: Twin, watched: tuple[str, ...] = ("lesion",)) -> dict:
    imaging, vitals = twin.reported(IMAGING), twin.reported(VITALS)
    latest = imaging.get("latest", {}).get("volumesMl", {})
    growth = imaging.get("growthMlPerMonth", {})
    watched_name = next((name for name in watched if name in latest), None)
    return {
        "patient_id": twin.twin_id, "sex": twin.attributes.get("sex"), "birth_year": twin.attributes.get("birthYear"),
        "studies": imaging.get("studyCount", 0), "latest_study_ms": imaging.get("latest", {}).get("acquiredMs"),
        "latest_volumes_ml": latest, "growth_ml_per_month": growth,
        "watched": watched_name, "watched_ml": latest.get(watched_name) if watched_name else None,
        "watched_growth": growth.get(watched_name) if watched_name else None,
        "open_findings": len(open_findings(twin)),
        "vitals_status": vitals_status(vitals), "revision": twin.revision,
    }


def vitals_status(vitals: dict) -> str:
    if not vitals:
        return "no vitals"
    if vitals.get("anomalyNow"):
        return "anomalous now"
    return f"{len(vitals.get('anomalies', {}))} anomalous period(s)" if vitals.get("anomalies") else "normal"
