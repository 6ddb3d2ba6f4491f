"""The patient twin's rules without the services: the growth finding, growth rates, ordering by acquisition,
one revision per study, vitals periods that only grow, and study files that are whole or absent."""

from __future__ import annotations

import gzip
from types import SimpleNamespace

import pytest

from apps.healthcare import patients
from apps.healthcare.monitoring import anomalous_periods, merge_period, vitals_properties, worth_recording
from apps.healthcare.studies import IMAGE, LABELS, StudyFiles, atomic_file
from apps.twins import TwinStore, open_database

MONTH = patients.MS_PER_MONTH
RULE = patients.GrowthRule(("lesion",), 0.2, 0.1)


def result(organ_ml: float, lesion_ml: float):
    """A SegmentationResult-like object with these volumes (1 mL = 125 voxels of 2 mm)."""
    def structure(label, name, ml):
        box = SimpleNamespace(min_index=[1, 2, 3], max_index=[4, 5, 6]) if ml else SimpleNamespace(min_index=[],
                                                                                                   max_index=[])
        return SimpleNamespace(label=label, name=name, voxel_count=int(ml * 125), volume_ml=ml, bounding_box=box)
    model = SimpleNamespace(name="abdomen-phantom", version="1", provenance="test", device="cpu", dtype="float32")
    geometry = SimpleNamespace(shape=[96, 96, 96], spacing_mm=[2.0, 2.0, 2.0], orientation="RAS")
    return SimpleNamespace(structures=[structure(1, "organ", organ_ml), structure(2, "lesion", lesion_ml)],
                           geometry=geometry, label_names={0: "background", 1: "organ", 2: "lesion"}, model=model)


@pytest.fixture
def twins(tmp_path) -> TwinStore:
    store = TwinStore(open_database(f"sqlite:///{tmp_path / 'twins.sqlite3'}"))
    store.create_schema()
    store.create("PT-ABC123", patients.DEFINITION, patients.attributes("female", 1960))
    return store


@pytest.mark.slow
def test_the_twin_rules_on_postgresql(postgres_url):
    """The same statements on PostgreSQL: one revision per study, the finding in the same one."""
    store = TwinStore(open_database(postgres_url))
    store.create_schema()
    store.create("PT-ABC123", patients.DEFINITION, patients.attributes("male", 1950))
    ingest(store, "S-00000001", 0, 2.0)
    grown = ingest(store, "S-00000002", 3, 3.0)
    assert grown.revision == 3 and len(findings(grown)) == 1
    assert store.state_at("PT-ABC123", revision=3).features == grown.features


def ingest(twins: TwinStore, study_id: str, month: float, lesion_ml: float, organ_ml: float = 1000.0):
    twin = twins.get("PT-ABC123")
    study = patients.study_record(int(month * MONTH), result(organ_ml, lesion_ml), "nifti")
    return twins.modify("PT-ABC123", patients.imaging_patch(twin, study_id, study, RULE), kind="study")


def findings(twin) -> list[dict]:
    return sorted(twin.reported(patients.FINDINGS).get("items", {}).values(), key=lambda f: f["studyId"])


def test_growth_past_the_rule_raises_one_finding_per_study(twins):
    ingest(twins, "S-00000001", 0, 2.0)
    assert findings(ingest(twins, "S-00000002", 3, 2.3)) == []          # +15 %: under the threshold
    grown = ingest(twins, "S-00000003", 6, 3.0)                         # +30 % on the study before
    (finding,) = findings(grown)
    assert (finding["studyId"], finding["previousStudyId"]) == ("S-00000003", "S-00000002")
    assert (finding["fromMl"], finding["toMl"], finding["increase"], finding["status"]) == (2.3, 3.0, 0.304, "open")
    assert finding["months"] == pytest.approx(3.0) and "20%" in finding["rule"]
    imaging = grown.reported(patients.IMAGING)
    assert imaging["studyCount"] == 3 and imaging["latest"]["studyId"] == "S-00000003"
    assert imaging["growthMlPerMonth"]["lesion"] == pytest.approx(1.0 / 6, abs=0.01)   # least squares over three
    assert imaging["growthMlPerMonth"]["organ"] == 0
    assert grown.revision == 4 and [e.kind for e in twins.history("PT-ABC123")] == ["created"] + ["study"] * 3


def test_tiny_growth_and_shrinking_raise_nothing_and_a_new_lesion_does(twins):
    ingest(twins, "S-00000001", 0, 0.05)
    assert findings(ingest(twins, "S-00000002", 1, 0.12)) == []         # +140 % but only 0.07 mL
    assert findings(ingest(twins, "S-00000003", 2, 0.0)) == []          # gone
    (appeared,) = findings(ingest(twins, "S-00000004", 3, 0.5))
    assert appeared["fromMl"] == 0.0 and "increase" not in appeared


def test_studies_are_compared_in_the_order_they_were_acquired(twins):
    ingest(twins, "S-00000003", 6, 4.0)
    ingest(twins, "S-00000001", 0, 2.0)   # older, arrives later: compared with nothing before it
    twin = ingest(twins, "S-00000002", 3, 3.0)   # between the two: +50 % on S-00000001
    assert [f["studyId"] for f in findings(twin)] == ["S-00000002"]
    assert twin.reported(patients.IMAGING)["latest"]["studyId"] == "S-00000003"
    times, series = patients.volume_series(twin)
    assert times == sorted(times) and series["lesion"] == [2.0, 3.0, 4.0]


def test_summary_of_the_patient_list(twins):
    ingest(twins, "S-00000001", 0, 2.0)
    summary = patients.summary(ingest(twins, "S-00000002", 2, 4.0))
    assert (summary["watched"], summary["watched_ml"], summary["open_findings"]) == ("lesion", 4.0, 1)
    assert summary["watched_growth"] == pytest.approx(1.0) and summary["vitals_status"] == "no vitals"


def test_anomalous_windows_become_periods_that_are_extended_not_forgotten():
    def window(start_minute, anomalous, score=1.0):
        return SimpleNamespace(start_ms=start_minute * 60_000, end_ms=(start_minute + 29) * 60_000,
                               anomalous=anomalous, score=score)
    windows = [window(0, False), window(30, True, 2.0), window(60, True, 3.0), window(90, False), window(120, True)]
    assert anomalous_periods(windows) == [(1_800_000, 5_340_000, 3.0), (7_200_000, 8_940_000, 1.0)]
    known: dict = {}
    merge_period(known, 1_800_000, 5_340_000, 3.0, ["spo2"])
    merge_period(known, 3_600_000, 7_000_000, 4.0, ["spo2"])   # the windows slid: the same period, longer
    assert list(known.values()) == [{"startMs": 1_800_000, "endMs": 7_000_000, "score": 4.0, "topSensors": ["spo2"]}]

    scored = SimpleNamespace(threshold=0.5, top_sensors=["heart_rate"], windows=[window(200, True)])
    model = SimpleNamespace(name="vitals", version="1", provenance="test", device="cpu", dtype="float32")
    properties = vitals_properties({"anomalies": known}, (12_000_000, [80, 16, 97, 120, 80, 37]), scored, model)
    assert len(properties["anomalies"]) == 2 and properties["anomalyNow"] and properties["latest"]["spo2"] == 97
    assert vitals_properties(properties, (12_000_000, [80, 16, 97, 120, 80, 37]), scored, model) == properties


def test_study_files_are_whole_or_absent_and_unlisted_ones_are_cleared(tmp_path):
    files = StudyFiles(tmp_path / "studies")
    plain = tmp_path / "upload.nii"
    plain.write_bytes(b"\x5c\x01\x00\x00" + bytes(400))
    files.write_gzipped_copy("PT-ABC123", "S-00000001", IMAGE, plain)
    files.write_bytes("PT-ABC123", "S-00000001", LABELS, gzip.compress(b"labels"))
    assert gzip.decompress(files.path("PT-ABC123", "S-00000001", IMAGE).read_bytes()) == plain.read_bytes()
    assert files.exists("PT-ABC123", "S-00000001")

    class Interrupted(Exception):
        pass
    with pytest.raises(Interrupted):
        with atomic_file(files.path("PT-ABC123", "S-00000002", IMAGE)) as out:
            out.write(b"half a study")
            raise Interrupted
    assert not list((tmp_path / "studies" / "PT-ABC123" / "S-00000002").iterdir())   # no file, no .part

    assert files.remove_unlisted({"PT-ABC123": {"S-00000001"}}) == 1
    assert files.exists("PT-ABC123", "S-00000001")
    for bad in ("../etc", "PT-abc123", "PT-ABC1234"):
        with pytest.raises(LookupError):
            files.path(bad, "S-00000001", IMAGE)
    with pytest.raises(LookupError):
        files.path("PT-ABC123", "S-0000000/", LABELS)


def test_a_new_reading_alone_is_recorded_every_15_monitored_minutes_an_anomaly_at_once():
    period = {"startMs": 0, "endMs": 1_800_000, "score": 2.0, "topSensors": ["spo2"]}
    base = {"anomalies": {"0": period}, "anomalyNow": False, "latest": {"spo2": 97}, "latestMs": 0}
    assert worth_recording({}, base)
    assert not worth_recording(base, {**base, "latest": {"spo2": 96}, "latestMs": 14 * 60_000})
    assert worth_recording(base, {**base, "latest": {"spo2": 96}, "latestMs": 15 * 60_000})
    assert worth_recording(base, {**base, "anomalyNow": True, "latestMs": 60_000})
    longer = {"0": {**period, "endMs": 1_860_000}}
    assert not worth_recording(base, {**base, "anomalies": longer, "latestMs": 60_000})   # the windows slid
    assert worth_recording(base, {**base, "anomalies": {**longer, "9": period}, "latestMs": 60_000})
