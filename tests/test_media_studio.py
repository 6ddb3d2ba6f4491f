"""The media studio over its real HTTP API: a real app process talking to real text, audio and vision services
over mutual TLS. Jobs run every step in order and keep their files; four run at once; a cancelled job stops
within seconds and frees its slot; kill -9 of the app loses no job; a service down fails its step with
UNAVAILABLE and a retry redoes only what is missing; a finished job is deleted with its files, for good; bad
input is 400 naming the field."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

import pytest
import sqlalchemy as sa

from apps.media.jobs import Job, JobStore, Scene, scenes_table, steps_table
from apps.media.options import JobOptions
from apps.twins import open_database
from tests.media import (MediaApp, free_port, media_stack, start_media_app,  # noqa: F401 - fixture
                         start_service_on_port)
from tests.support import metric, wait_for

STAGES = (("story",), ("narration", "pictures"), ("music",), ("video",))
SCENE_FILES = ("scene-{:02d}.wav", "scene-{:02d}.png")


def events(media: MediaApp, job_id: str, into: list, timeout: float = 180) -> threading.Thread:
    """The job's Server-Sent Events, decoded, appended to ``into`` from a thread until the stream ends."""
    def read():
        with urllib.request.urlopen(f"{media.root}/api/jobs/{job_id}/events", timeout=timeout) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in stream:
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind == "job":
                    into.append(json.loads(line[len("data: "):]))
        reader.ended = True   # the server ended the stream whole
    reader = threading.Thread(target=read, daemon=True)
    reader.ended = False
    reader.start()
    return reader


def assert_steps_in_order(job: dict) -> None:
    """No step has started before every step of the stages before it was done."""
    states = {step["name"]: step["state"] for step in job["steps"]}
    for later in range(1, len(STAGES)):
        if any(states[name] != "pending" for name in STAGES[later]):
            earlier = [name for stage in STAGES[:later] for name in stage]
            assert all(states[name] == "done" for name in earlier), (job["version"], states)


def decode_steps(text) -> tuple[float, float]:
    """The text service's decode steps so far: all of them, and those of a single sequence."""
    metrics = text.metrics()
    return (metric(metrics, "modalmesh_generation_decode_batch_size_count"),
            metric(metrics, "modalmesh_generation_decode_batch_size_bucket", le="1.0"))


def assert_done_with_files(media: MediaApp, job: dict) -> None:
    assert job["state"] == "done", (job["error"], job["steps"])
    assert [step["state"] for step in job["steps"]] == ["done"] * 5, job["steps"]
    names = {"story.txt", "video.mp4", "subtitles.vtt"} | {pattern.format(scene["index"]) for scene in job["scenes"]
                                                           for pattern in SCENE_FILES}
    for name in names:
        assert media.file(job["job_id"], name).stat().st_size > 0, name
    assert not [p.name for p in media.file(job["job_id"], "").iterdir() if p.name.startswith(".")], "partial files"


@pytest.mark.slow
def test_a_job_runs_every_step_in_order_and_keeps_its_files(media_stack):
    job = media_stack.submit(prompt="a fox who loses a lantern in a snowy forest", scenes=3, seed=11,
                             voice="en-gb", words_per_minute=180, style="watercolor")
    assert job["job_id"].startswith("M-") and len(job["job_id"]) == 14
    assert job["state"] in ("queued", "running") and job["options"]["seed"] == 11
    seen: list[dict] = []
    reader = events(media_stack, job["job_id"], seen)
    job = media_stack.wait_job(job["job_id"])
    reader.join(10)
    assert reader.ended, "the event stream did not end with the job"
    assert_done_with_files(media_stack, job)

    # The stream told every change in order, and ended with the finished job.
    versions = [event["version"] for event in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert seen[-1]["state"] == "done" and seen[-1]["version"] == job["version"]
    for event in seen:
        assert_steps_in_order(event)
    assert any(event["steps"][0]["state"] == "running" for event in seen)
    assert any(s["name"] == "video" and s["state"] == "running" for event in seen for s in event["steps"])

    # The story in scenes, each narrated and pictured; the story file is the story the job shows.
    assert 1 <= len(job["scenes"]) <= 3 and job["steps"][0]["done"] > 10
    assert " ".join(scene["text"] for scene in job["scenes"]) == " ".join(job["story"].split())
    assert media_stack.file(job["job_id"], "story.txt").read_text() == job["story"]
    for scene in job["scenes"]:
        assert scene["narration_s"] > 0.5 and scene["picture"]
        assert scene["picture_source"]["caption"] and -1 <= scene["picture_source"]["similarity"] <= 1
    assert job["video"]["width"] == 640 and job["video"]["height"] == 360
    assert job["video"]["bytes"] == media_stack.file(job["job_id"], "video.mp4").stat().st_size
    narration_s = sum(scene["narration_s"] for scene in job["scenes"])
    assert narration_s < job["video"]["duration_s"] < narration_s + 0.5 * len(job["scenes"]) + 0.5

    # The log names the job, never what it is about.
    assert job["job_id"] in media_stack.app.log() and "lantern" not in media_stack.app.log()

    # Every model is named with its provenance.
    assert set(job["models"]) == {"story", "narration", "pictures"}
    for model in job["models"].values():
        assert model["name"] and model["provenance"]

    # The files over HTTP: the video with Range (a browser seeks), subtitles as WebVTT.
    files = f"{media_stack.root}/api/jobs/{job['job_id']}/files"
    request = urllib.request.Request(f"{files}/video.mp4", headers={"Range": "bytes=0-99"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 206 and reply.headers["content-type"] == "video/mp4"
        assert reply.headers["content-range"] == f"bytes 0-99/{job['video']['bytes']}" and len(reply.read()) == 100
    with urllib.request.urlopen(f"{files}/subtitles.vtt", timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/vtt") and reply.read().startswith(b"WEBVTT")
    with urllib.request.urlopen(f"{files}/scene-01.png", timeout=10) as reply:
        assert reply.headers["content-type"] == "image/png" and reply.read().startswith(b"\x89PNG")
    assert media_stack.api("GET", f"/jobs/{job['job_id']}/files/music.wav")[0] == 200
    for name in ("nothing.txt", "..%2Fmedia.sqlite3", "scene-99.png"):
        assert media_stack.api("GET", f"/jobs/{job['job_id']}/files/{name}")[0] == 404, name

    # Listed newest first; finished jobs refuse cancel and retry.
    assert media_stack.api("GET", "/jobs")[1][0]["job_id"] == job["job_id"]
    status, body = media_stack.api("POST", f"/jobs/{job['job_id']}/cancel")
    assert status == 409 and "done" in body["error"]
    assert media_stack.api("POST", f"/jobs/{job['job_id']}/retry")[0] == 409


@pytest.mark.slow
def test_four_jobs_at_once_all_complete(media_stack):
    prompts = ["a robot in a harbour", "an owl who is afraid of the dark", "a turtle on a long journey to the sea",
               "Tell me a story about a dragon who finds a map in a cave."]
    text = media_stack.services["text"]
    before = decode_steps(text)
    jobs = [media_stack.submit(prompt=prompt, scenes=2, seed=i, music=i % 2 == 0) for i, prompt in enumerate(prompts)]
    finished = [media_stack.wait_job(job["job_id"], timeout=300) for job in jobs]
    for job in finished:
        assert_done_with_files(media_stack, job)
    # They ran side by side: each started before any of them finished, and their stories were decoded
    # together in the text service (decode steps of more than one sequence).
    assert max(job["started_ms"] for job in finished) < min(job["finished_ms"] for job in finished)
    after = decode_steps(text)
    assert after[0] - before[0] > after[1] - before[1], (before, after)
    with_music = [job["steps"][3]["detail"] != "off" for job in finished]
    assert with_music == [True, False, True, False]
    assert [media_stack.file(job["job_id"], "music.wav").exists() for job in finished] == with_music


BAD_OPTIONS = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"prompt": "a fox\nin a forest"}, "prompt"),
    ({"prompt": "a fox\x00"}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "a fox", "scenes": -1}, "scenes"),
    ({"prompt": "a fox", "scenes": 0}, "scenes"),
    ({"prompt": "a fox", "scenes": 99}, "scenes"),
    ({"prompt": "a fox", "scenes": "x"}, "scenes"),
    ({"prompt": "a fox", "scenes": 2.5}, "scenes"),
    ({"prompt": "a fox", "scenes": True}, "scenes"),
    ({"prompt": "a fox", "voice": "klingon"}, "voice"),
    ({"prompt": "a fox", "style": "cubist"}, "style"),
    ({"prompt": "a fox", "words_per_minute": 1000}, "words_per_minute"),
    ({"prompt": "a fox", "music": "maybe"}, "music"),
    ({"prompt": "a fox", "seed": -5}, "seed"),
    ({"prompt": "a fox", "seed": 2**32}, "seed"),
    ({"prompt": "a fox", "length": 3}, "length"),
]


@pytest.mark.slow
def test_bad_input_is_400_naming_the_field_and_unknown_jobs_are_404(media_stack):
    before = len(media_stack.api("GET", "/jobs?limit=200")[1])
    for body, field in BAD_OPTIONS:
        status, answer = media_stack.api("POST", "/jobs", body)
        assert status == 400, (body, status, answer)
        assert field in [f for f, _ in answer["violations"]], (body, answer)
        assert answer["error"] and all(description for _, description in answer["violations"])
    status, answer = media_stack.api("POST", "/jobs", {"prompt": "", "scenes": 0, "voice": "x"})
    assert {f for f, _ in answer["violations"]} == {"prompt", "scenes", "voice"}
    for raw in (b"", b"not json", b"[1, 2]", b'"a fox"'):
        status, answer = media_stack.api("POST", "/jobs", raw)
        assert status == 400 and "JSON object" in answer["error"], (raw, answer)
    assert media_stack.api("POST", "/jobs", b"{" * 70_000)[0] == 413
    assert media_stack.api("GET", "/jobs?limit=0")[0] == 400
    assert len(media_stack.api("GET", "/jobs?limit=200")[1]) == before, "a refused job was stored"

    for job_id in ("M-000000000000", "nonsense", "M-../../etc"):
        for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("GET", "/events"),
                             ("GET", "/files/video.mp4")):
            status, answer = media_stack.api(method, f"/jobs/{job_id}{path}")
            assert status == 404 and "error" in answer, (job_id, path, status, answer)


@pytest.mark.slow
def test_a_cancelled_job_stops_within_seconds_and_its_slot_goes_to_the_next(pki, media_stack, tmp_path):
    """One job at a time and one waiting: a third is refused (429); cancelling the running job mid-way ends
    it within seconds, with no partial file left, and the waiting job starts at once."""
    media = start_media_app(pki, tmp_path, media_stack.services, concurrent_jobs=1, max_queued_jobs=1)
    try:
        # Slow speech makes a long video: it is still being made when it is cancelled.
        first = media.submit(prompt="a girl who builds a kite on a windy hill", scenes=4, seed=3,
                             words_per_minute=90)
        second = media.submit(prompt="a cat who makes a new friend in the city", scenes=2, seed=4)
        assert media.job(second["job_id"])["queue_position"] == 1
        status, answer = media.api("POST", "/jobs", {"prompt": "one too many"})
        assert status == 429 and "waiting" in answer["error"]

        media.wait_job(first["job_id"], until=lambda job: job["steps"][4]["state"] == "running")
        started = time.monotonic()
        status, cancelled = media.api("POST", f"/jobs/{first['job_id']}/cancel")
        assert status == 200 and cancelled["state"] == "cancelled", cancelled
        assert time.monotonic() - started < 5
        assert cancelled["steps"][4]["state"] == "cancelled" and cancelled["video"] is None
        assert not media.file(first["job_id"], "video.mp4").exists()
        assert not [p.name for p in media.file(first["job_id"], "").iterdir() if p.name.startswith(".")]
        running = media.wait_job(second["job_id"], timeout=3, until=lambda job: job["state"] != "queued")
        assert running["state"] in ("running", "done") and running["queue_position"] is None

        assert media.api("POST", f"/jobs/{first['job_id']}/cancel")[0] == 409
        assert_done_with_files(media, media.wait_job(second["job_id"]))
    finally:
        media.app.stop(10)


@pytest.mark.slow
def test_a_stopped_or_killed_app_loses_no_job(pki, media_stack, tmp_path):
    """SIGTERM mid-job puts the job back in the queue; kill -9 mid-job leaves it running, and the next start
    counts one interruption and resumes it. Every job submitted finishes."""
    media = start_media_app(pki, tmp_path, media_stack.services, concurrent_jobs=1)
    jobs = [media.submit(prompt=prompt, scenes=2, seed=i) for i, prompt in
            enumerate(["a mouse who helps a lost bird in the garden", "a small boat on a quiet lake"])]
    first = jobs[0]["job_id"]
    seen: list[dict] = []
    try:
        media.wait_job(first, until=lambda job: job["steps"][1]["state"] != "pending")
        reader = events(media, first, seen)
        wait_for(lambda: seen, timeout=10)
    finally:
        assert media.app.stop(20) == 0, media.app.log_tail()
    reader.join(5)
    assert reader.ended, "draining did not end the event stream"
    store = JobStore(open_database(f"sqlite:///{media.data_dir / 'media.sqlite3'}"))
    assert [store.load(job["job_id"]).state for job in jobs] == ["queued", "queued"]
    assert store.load(first).interruptions == 0

    media = start_media_app(pki, tmp_path, media_stack.services, data_dir=media.data_dir, concurrent_jobs=1)
    try:
        media.wait_job(first, until=lambda job: job["steps"][4]["state"] == "running")
    finally:
        os.kill(media.app.pid, signal.SIGKILL)   # no drain, no flush
        media.app.process.wait()
    assert store.load(first).state == "running"

    media = start_media_app(pki, tmp_path, media_stack.services, data_dir=media.data_dir, concurrent_jobs=1)
    try:
        for job in jobs:
            assert_done_with_files(media, media.wait_job(job["job_id"]))
        assert {j["job_id"] for j in media.api("GET", "/jobs")[1]} == {job["job_id"] for job in jobs}
        assert store.load(first).interruptions == 1
    finally:
        media.app.stop(10)


@pytest.mark.slow
def test_a_finished_job_is_deleted_with_its_files_and_stays_deleted(pki, media_stack, tmp_path):
    """A queued or running job is not deleted (409) and goes on; a finished one is, with its files (204), and
    is then unknown (404). After a restart it stays deleted, and the folder of a job the store no longer lists
    (a process stopped between deleting its rows and its folder) is removed, while the folders of listed jobs
    and any folder not named like a job are kept."""
    media = start_media_app(pki, tmp_path, media_stack.services, concurrent_jobs=1)
    try:
        kept, deleted = (media.submit(prompt=prompt, scenes=1, seed=i, music=False)["job_id"] for i, prompt in
                         enumerate(["a robot in a harbour", "an owl who is afraid of the dark"]))
        media.wait_job(kept, until=lambda job: job["state"] == "running")
        for job_id, state in ((kept, "running"), (deleted, "queued")):
            status, answer = media.api("DELETE", f"/jobs/{job_id}")
            assert status == 409 and f"is {state}" in answer["error"], (status, answer)
        assert media.job(deleted)["state"] == "queued" and media.job(kept)["state"] == "running"

        assert media.api("POST", f"/jobs/{deleted}/cancel")[0] == 200
        assert media.api("DELETE", f"/jobs/{deleted}") == (204, "")   # a job cancelled before it made a file
        job = media.wait_job(kept)
        assert_done_with_files(media, job)
        assert media.api("DELETE", f"/jobs/{kept}") == (204, "")
        assert not media.file(kept, "").exists()
        for job_id in (kept, deleted):
            for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/files/video.mp4"),
                                 ("GET", "/files/story.txt"), ("POST", "/retry"), ("DELETE", "")):
                assert media.api(method, f"/jobs/{job_id}{path}")[0] == 404, (job_id, method, path)
        assert media.api("GET", "/jobs")[1] == []
        for job_id in ("M-000000000000", "nonsense", "M-../../etc"):
            status, answer = media.api("DELETE", f"/jobs/{job_id}")
            assert status == 404 and "error" in answer, (job_id, status, answer)
        again = media.submit(prompt="a small boat on a quiet lake", scenes=1, seed=3, music=False)["job_id"]
        assert_done_with_files(media, media.wait_job(again))
    finally:
        media.app.stop(10)

    jobs = media.data_dir / "jobs"
    for name in (kept, "M-0000000000ff", "not-a-job"):   # debris of deletes, and a folder of someone else's
        (jobs / name).mkdir()
        (jobs / name / "story.txt").write_text("left behind")
    media = start_media_app(pki, tmp_path, media_stack.services, data_dir=media.data_dir)
    try:
        assert [job["job_id"] for job in media.api("GET", "/jobs")[1]] == [again]
        assert media.api("GET", f"/jobs/{kept}")[0] == 404
        assert sorted(path.name for path in jobs.iterdir()) == sorted([again, "not-a-job"])
        assert_done_with_files(media, media.job(again))
    finally:
        media.app.stop(10)


@pytest.mark.slow
def test_a_job_interrupted_more_than_three_times_is_failed_with_the_reason(pki, media_stack, tmp_path):
    """Jobs a dead process left: one that was interrupted three times before is failed, not run a fifth time;
    the one beside it, interrupted once, resumes and finishes."""
    data_dir = tmp_path / "media-data"
    store = JobStore(open_database(f"sqlite:///{data_dir / 'media.sqlite3'}"))
    store.create_schema()
    crashing = Job("M-0123456789ab", JobOptions("a robot in a harbour", scenes=1, seed=1), state="running",
                   interruptions=3)
    crashing.step("story").state = "running"
    resumed = Job("M-ba9876543210", JobOptions("a robot in a harbour", scenes=1, seed=2, music=False),
                  state="running")
    resumed.step("story").state = "running"
    for job in (crashing, resumed):
        store.save(job)
    media = start_media_app(pki, tmp_path, media_stack.services, data_dir=data_dir)
    try:
        failed = media.job(crashing.job_id)
        assert failed["state"] == "failed" and failed["finished_ms"]
        assert failed["error"]["code"] == "INTERRUPTED" and failed["error"]["step"] == "story"
        assert "4 times" in failed["error"]["message"]
        assert_done_with_files(media, media.wait_job(resumed.job_id))
        assert store.load(resumed.job_id).interruptions == 1
    finally:
        media.app.stop(10)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_job_store_keeps_a_job_whole(database, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'j.db'}"
    store = JobStore(open_database(url))
    store.create_schema()
    older = Job("M-00000000000a", JobOptions("a fox", seed=1), created_ms=1000)
    job = Job("M-00000000000b", JobOptions("an owl", scenes=2, voice="en-gb", music=False, seed=9),
              created_ms=2000, story="An owl. It flew.", models={"story": {"name": "storyteller"}})
    job.scenes = [Scene(1, "An owl.", 1.25, True, {"caption": "an owl", "similarity": 0.5}), Scene(2, "It flew.")]
    job.step("story").state, job.step("story").done = "done", 7
    for saved in (older, job):
        store.save(saved)
    job.state, job.version, job.error = "failed", 5, {"step": "pictures", "code": "UNAVAILABLE", "message": "x"}
    store.save(job)   # saved again: replaced whole, steps and scenes included
    loaded = store.load(job.job_id)
    assert loaded.as_dict() == job.as_dict(), url
    assert [j.job_id for j in store.newest(10)] == [job.job_id, older.job_id]
    assert [j.job_id for j in store.unfinished()] == [older.job_id]
    assert store.load("M-ffffffffffff") is None
    assert store.known([job.job_id, "M-ffffffffffff", older.job_id]) == {job.job_id, older.job_id}

    assert store.delete(job.job_id) and not store.delete(job.job_id)   # the job, its steps and its scenes
    assert store.load(job.job_id) is None and [j.job_id for j in store.newest(10)] == [older.job_id]
    with store.engine.connect() as conn:
        for table, left in ((steps_table, [older.job_id]), (scenes_table, [])):   # the older job has no scenes
            assert conn.execute(sa.select(table.c.job_id).distinct()).scalars().all() == left, url
    assert store.known([job.job_id]) == set()


@pytest.mark.slow
def test_a_service_down_fails_its_step_and_a_retry_redoes_only_what_is_missing(pki, media_stack, tmp_path):
    """The app's audio service is down (nothing listens at its address): the job fails at narration with
    UNAVAILABLE after its retries, and the pictures still finish. With the service started at that address,
    a retry finishes the job without writing the story or the pictures again."""
    audio_port = free_port()
    media = start_media_app(pki, tmp_path, media_stack.services, audio_address=f"localhost:{audio_port}", unavailable_retries=1)
    audio = None
    try:
        job = media.wait_job(media.submit(prompt="a robot in a harbour", scenes=2, seed=5)["job_id"])
        assert job["state"] == "failed", job
        assert job["error"]["step"] == "narration" and job["error"]["code"] == "UNAVAILABLE"
        assert job["error"]["message"].startswith("audio service: ") and "tried 2 times" in job["error"]["message"]
        assert [step["state"] for step in job["steps"]] == ["done", "failed", "done", "pending", "pending"]
        kept = {name: media.file(job["job_id"], name).stat().st_mtime_ns
                for name in ("story.txt", "scene-01.png", "scene-02.png")}

        audio = start_service_on_port(audio_port, "services.audio", pki, tmp_path, "audio")
        status, retried = media.api("POST", f"/jobs/{job['job_id']}/retry")
        assert status == 202 and retried["state"] == "queued" and retried["error"] is None
        assert [step["state"] for step in retried["steps"]] == ["done", "pending", "done", "pending", "pending"]
        job = media.wait_job(job["job_id"])
        assert_done_with_files(media, job)
        assert {name: media.file(job["job_id"], name).stat().st_mtime_ns for name in kept} == kept
    finally:
        media.app.stop(10)
        if audio:
            audio.stop(20)
