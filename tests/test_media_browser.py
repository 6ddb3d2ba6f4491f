"""End to end in a real browser (Debian Chromium): a prompt with a control character is refused beside the
field; then a prompt typed in the studio's form becomes a job whose page shows it queued behind another job,
then its steps advancing in order (story, then narration and pictures, then music and video), the story as it
streams and the scenes as they come; the finished video plays in the page, its default subtitles track holds
cues timed within each scene's narration (and active when the video is there), and the MP4 the download link
gives has an H.264 video and an AAC audio stream as long as the narrations and their pauses.

The test runs its own app, one job at a time, and queues a job before the one it follows: the page is then
watching before the story starts, however fast the text service writes it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from apps.media.main import MediaSettings
from tests.media import APP_SETTINGS, media_stack, start_media_app  # noqa: F401 - a fixture
from tests.test_manufacturing_browser import CHROMIUM_ARGS

pytestmark = pytest.mark.slow

PROMPT = "A small robot who learns to paint the sea"
MP4_CODECS = 'video/mp4; codecs="avc1.42E01E, mp4a.40.2"'
PAUSE_S = APP_SETTINGS.get("pause_s", MediaSettings.model_fields["pause_s"].default)   # after each narration
TIME_SLACK_S = 0.05   # cue times are written to the millisecond; the browser reads them as floats

# Installed before the page's own script: the job's and every step's state at each change, and the length
# of the story each time it changes, in the order the page showed them.
RECORD_PROGRESS = """
window.progress = [];
window.storyLengths = [];
document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (!job) return;
  const record = () => window.progress.push(Object.fromEntries([["job", job.dataset.state],
    ...[...job.querySelectorAll("#steps [data-step]")].map((row) => [row.dataset.step, row.dataset.state])]));
  record();
  new MutationObserver(record).observe(job, {attributes: true, subtree: true, attributeFilter: ["data-state"]});
  const story = document.getElementById("story");
  new MutationObserver(() => window.storyLengths.push(story.textContent.length))
    .observe(story, {childList: true, characterData: true, subtree: true});
});
"""

CUES = """() => [...document.querySelector("#video").textTracks[0].cues]
  .map((cue) => ({start: cue.startTime, end: cue.endTime, text: cue.text}))"""


@pytest.fixture
def one_at_a_time(media_stack, pki, tmp_path):
    """An app of its own on the shared services that runs one job at a time."""
    app = start_media_app(pki, tmp_path, media_stack.services, concurrent_jobs=1)
    yield app
    app.app.stop(10)


def test_a_prompt_becomes_a_video_that_plays_with_timed_subtitles(one_at_a_time, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    stack = one_at_a_time
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(accept_downloads=True)
        page.add_init_script(RECORD_PROGRESS)
        page.goto(f"{stack.root}/media/")

        # Bad input: the page says what is wrong beside the prompt, and keeps what was typed.
        page.fill("#prompt", "a robot\u0007 painting")
        page.fill("#scenes", "2")
        page.click("#generate")
        page.wait_for_selector("#prompt-error")
        assert "control character" in page.inner_text("#prompt-error")
        assert page.get_attribute("#prompt", "aria-invalid") == "true"
        assert page.input_value("#scenes") == "2"

        ahead = stack.submit(prompt="A lantern in the snow", scenes=1, music=False)
        page.fill("#prompt", PROMPT)
        page.select_option("#voice", "en-gb")
        page.press("#prompt", "Enter")   # Enter in the prompt box starts the video
        page.wait_for_url(lambda url: "/media/jobs/M-" in url)
        job_id = page.url.rsplit("/", 1)[1]
        assert page.inner_text("#queue-position") == "number 1 in the queue"
        page.wait_for_selector("#video-section:not([hidden])", timeout=240_000)
        job = stack.job(job_id)
        assert job["state"] == "done" and stack.job(ahead["job_id"])["state"] == "done", job

        _check_progress_order(page.evaluate("window.progress"))
        lengths = page.evaluate("window.storyLengths")
        # It streamed in: shown in part, then more (the finished story may lose a trailing space).
        assert len(set(lengths)) > 2 and lengths[0] < len(job["story"]) / 2, lengths
        assert page.inner_text("#story") == job["story"]
        assert job["options"]["scenes"] == 2 and len(job["scenes"]) == 2, job
        assert page.locator("#scenes .scene").count() == 2, page.inner_html("#scenes")
        for scene in job["scenes"]:
            picture = page.locator(f'#scenes [data-scene="{scene["index"]}"] img')
            assert picture.is_visible() and picture.evaluate("(img) => img.complete && img.naturalWidth > 0")

        video = page.locator("#video")
        assert video.evaluate(f"(v) => v.canPlayType({json.dumps(MP4_CODECS)})") in ("probably", "maybe"), \
            "this Chromium cannot play H.264 with AAC in MP4"
        page.wait_for_function("() => document.querySelector('#video').readyState >= 2", timeout=30_000)
        video.evaluate("(v) => { v.muted = true; return v.play(); }")
        page.wait_for_function("() => document.querySelector('#video').currentTime > 0.5", timeout=20_000)
        assert abs(video.evaluate("(v) => v.duration") - job["video"]["duration_s"]) < 0.5

        track = page.evaluate("() => { const t = document.querySelector('#video').textTracks[0];"
                              " return {kind: t.kind, mode: t.mode}; }")
        # Subtitles burned into the frames (the default): the track is loaded but not drawn over them again.
        expected_mode = "hidden" if job["video"]["burned_subtitles"] else "showing"
        assert track == {"kind": "subtitles", "mode": expected_mode}
        page.wait_for_function("() => (document.querySelector('#video').textTracks[0].cues || []).length > 0")
        cues = page.evaluate(CUES)
        expected_s = _check_cues_follow_the_narrations(cues, job["scenes"])

        # Seek into a cue of the second scene: the track has it active there.
        cue = next(c for c in cues if c["start"] >= expected_s[1][0] - TIME_SLACK_S)
        video.evaluate("(v) => v.pause()")
        video.evaluate(f"(v) => {{ v.currentTime = {(cue['start'] + cue['end']) / 2}; }}")
        page.wait_for_function("(text) => [...(document.querySelector('#video').textTracks[0].activeCues || [])]"
                               ".some((c) => c.text === text)", arg=cue["text"], timeout=10_000)

        with page.expect_download() as download:
            page.click("#download")
        mp4 = tmp_path / download.value.suggested_filename
        download.value.save_as(mp4)
        assert mp4.name == f"{job_id}.mp4"
        browser.close()

    _check_streams(mp4, sum(scene["narration_s"] + PAUSE_S for scene in job["scenes"]))


def _check_progress_order(progress: list[dict]) -> None:
    """Story running before narration or pictures start, both done before the video starts, and the video
    running before it is done: each step seen on its way, not only at the end."""
    def first(condition) -> int:
        return next(i for i, states in enumerate(progress) if condition(states))
    assert progress[0]["job"] == "queued" and progress[0]["story"] == "pending", progress
    story_running = first(lambda s: s["story"] == "running")
    parallel = first(lambda s: "running" in (s["narration"], s["pictures"]))
    video_running = first(lambda s: s["video"] == "running")
    done = first(lambda s: s["video"] == "done")
    assert story_running < parallel < video_running < done, progress
    assert progress[parallel]["story"] == "done", progress
    assert progress[video_running]["narration"] == progress[video_running]["pictures"] == "done", progress
    assert progress[video_running]["music"] == "done", progress


def _check_cues_follow_the_narrations(cues: list[dict], scenes: list[dict]) -> list[tuple[float, float]]:
    """Each scene's cues lie within its narration (scene i starts after the narrations and pauses before it),
    in order, and together say the scene's text. The scenes' narration spans, in seconds."""
    spans, start = [], 0.0
    for scene in scenes:
        spans.append((start, start + scene["narration_s"]))
        start += scene["narration_s"] + PAUSE_S
    remaining = list(cues)
    for (begin, end), scene in zip(spans, scenes):
        mine = [c for c in remaining if c["start"] < end]
        remaining = remaining[len(mine):]
        assert mine, (scene, cues)
        assert all(begin - TIME_SLACK_S <= c["start"] < c["end"] <= end + TIME_SLACK_S for c in mine), (spans, mine)
        assert " ".join(" ".join(c["text"].split()) for c in mine) == " ".join(scene["text"].split())
    assert not remaining, remaining
    return spans


def _check_streams(mp4: Path, expected_s: float) -> None:
    probe = json.loads(subprocess.run(
        ["/usr/bin/ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,duration",
         "-of", "json", str(mp4)], capture_output=True, text=True, check=True, timeout=30).stdout)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac", streams
    for kind in ("video", "audio"):
        assert abs(float(streams[kind]["duration"]) - expected_s) < 0.5, (kind, streams[kind], expected_s)
