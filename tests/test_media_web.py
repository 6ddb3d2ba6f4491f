"""The studio's pages over HTTP against the real app (tests/media.py): a form with bad input comes back with
status 400, the studio's own message beside each wrong field and every value as it was sent, and no job made;
unknown jobs are a 404 page, actions the job's state forbids a 409 page; cancel and retry redirect back to the
job, and a finished job's Delete to the gallery, which no longer lists it; a finished job's page has the video with its default subtitles track, the download link, the scenes and
the models; the gallery lists jobs newest first with their first picture; a full queue is a 429 page; a service that is
down is on every page and the step it failed says why, with Retry; everything answers under the gateway's
/media prefix with links that stay under it, and at the root."""

from __future__ import annotations

import html as markup
import json
import re
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest

from apps.media.options import InvalidJob, job_options
from tests.healthcare import Http
from tests.media import media_stack, start_media_app  # noqa: F401 - a fixture
from tests.support import free_port

pytestmark = pytest.mark.slow

GOOD_FORM = {"prompt": "A lighthouse keeper befriends a seal in a winter storm", "scenes": "2", "voice": "en-gb",
             "words_per_minute": "170", "style": "watercolor", "music": "on", "seed": "7"}
BAD_FORMS = [   # (what changes in the good form, the field the page must mark)
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "a storm " * 400}, "prompt"),
    ({"prompt": "a ship\x07 at sea"}, "prompt"),
    ({"prompt": "two\nlines"}, "prompt"),
    ({"scenes": "-1"}, "scenes"),
    ({"scenes": "many"}, "scenes"),
    ({"voice": "klingon"}, "voice"),
    ({"words_per_minute": "9000"}, "words_per_minute"),
    ({"style": "cubist"}, "style"),
]


class Elements(HTMLParser):
    """Every element with an id: its attributes and its text (a textarea's value, an error's message),
    and the value of each select's selected option."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, dict] = {}
        self.text: dict[str, str] = {}
        self.selected: dict[str, str] = {}
        self.open: list[tuple[str, str | None]] = []
        self.select: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self.select = attrs.get("id")
        if tag == "option" and "selected" in attrs and self.select:
            self.selected[self.select] = attrs.get("value", "")
        if "id" in attrs:
            self.attrs[attrs["id"]] = attrs
            self.text.setdefault(attrs["id"], "")
        if tag not in ("input", "img", "meta", "link", "br", "source", "track"):
            self.open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        while self.open:
            opened, _ = self.open.pop()
            if opened == tag:
                break

    def handle_data(self, data):
        for _, element_id in self.open:
            if element_id:
                self.text[element_id] += data


def http_of(stack) -> Http:
    return Http(int(stack.root.rsplit(":", 1)[1]))


def job_count(stack) -> int:
    status, jobs = stack.api("GET", "/jobs")
    assert status == 200, jobs
    return len(jobs)


@pytest.mark.parametrize(("change", "field"), BAD_FORMS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_FORMS)])
def test_a_bad_form_comes_back_with_the_message_beside_the_field_and_the_values_kept(media_stack, change, field):
    http, sent = http_of(media_stack), {**GOOD_FORM, **change}
    with pytest.raises(InvalidJob) as refused:   # what the studio itself says of these options
        job_options({k: v for k, v in sent.items() if k != "music"})
    expected = [d for f, d in refused.value.violations if f == field]
    assert expected, refused.value.violations
    before = job_count(media_stack)

    status, kind, body = http.post("/media/jobs", sent, accept="text/html")

    assert status == 400 and kind.startswith("text/html"), (status, body[:300])
    page = Elements(body.decode())
    assert "form-errors" in page.attrs
    assert page.attrs[field].get("aria-invalid") == "true"
    assert f"{field}-error" in page.attrs[field]["aria-describedby"].split()
    for description in expected:
        assert description in page.text[f"{field}-error"]
    # every value as it was sent: nothing to type again
    assert page.text["prompt"] == sent["prompt"]
    for name in ("scenes", "words_per_minute", "seed"):
        assert page.attrs[name]["value"] == sent[name]
    assert page.selected["voice"] == sent["voice"] and page.selected["style"] == sent["style"]
    assert "checked" in page.attrs["music"]
    assert job_count(media_stack) == before


def test_a_bad_form_asked_for_json_is_answered_in_json(media_stack):
    http = http_of(media_stack)
    status, kind, body = http.post("/media/jobs", {**GOOD_FORM, "scenes": "-1", "voice": "klingon"})
    assert status == 400 and kind.startswith("application/json")
    reply = json.loads(body)
    assert {field for field, _ in reply["violations"]} == {"scenes", "voice"}
    status, _, body = http.post("/media/jobs", b"\xff\xfe", "text/plain")
    assert status == 400 and "urlencoded" in json.loads(body)["error"]
    status, _, body = http.post("/media/jobs", b"prompt=" + b"x" * 300_000, "application/x-www-form-urlencoded",
                                accept="text/html")
    assert status == 413 and b"limit" in body


def test_an_unchecked_music_box_means_no_music(media_stack):
    http = http_of(media_stack)
    form = {k: v for k, v in GOOD_FORM.items() if k != "music"}
    status, _, body = http.post("/media/jobs", form)
    assert status == 202, body
    job = json.loads(body)
    assert job["options"]["music"] is False and job["options"]["seed"] == 7
    assert media_stack.api("POST", f"/jobs/{job['job_id']}/cancel")[0] == 200


def test_unknown_jobs_and_forbidden_actions_are_pages_with_their_status(media_stack):
    http = http_of(media_stack)
    status, kind, body = http.get("/media/jobs/M-000000000000")
    assert status == 404 and kind.startswith("text/html")
    assert "M-000000000000" in Elements(body.decode()).text["error-message"]
    status, kind, body = http.get("/media/jobs/M-000000000000", accept="application/json")
    assert status == 404 and json.loads(body)["status"] == 404
    assert http.post("/media/jobs/M-000000000000/retry", {}, accept="text/html")[0] == 404
    assert http.get("/media/no-such-page")[0] == 404

    status, _, _, headers = http.request("POST", "/media/jobs", urlencode({**GOOD_FORM, "scenes": "1"}).encode(),
                                         "application/x-www-form-urlencoded")
    assert status == 303
    location = headers["location"]
    job_id = location.rsplit("/", 1)[1]
    assert location == f"/media/jobs/{job_id}"
    page = Elements(http.get(location)[2].decode())
    assert page.attrs["job"]["data-job"] == job_id and "hidden" not in page.attrs["cancel-form"]
    assert "hidden" in page.attrs["delete-form"]
    assert page.attrs["job"]["data-events"] == f"/media/api/jobs/{job_id}/events"

    status, _, _, headers = http.request("POST", f"/media/jobs/{job_id}/cancel", b"",
                                         "application/x-www-form-urlencoded")
    assert status == 303 and headers["location"] == location
    assert media_stack.api("GET", f"/jobs/{job_id}")[1]["state"] == "cancelled"
    page = Elements(http.get(location)[2].decode())
    assert "hidden" in page.attrs["cancel-form"] and "hidden" not in page.attrs["retry-form"]
    assert "hidden" not in page.attrs["delete-form"]
    assert page.attrs["delete-form"]["action"] == f"{location}/delete"

    status, kind, body = http.post(f"/media/jobs/{job_id}/cancel", {}, accept="text/html")
    assert status == 409 and kind.startswith("text/html")
    assert "cancelled" in Elements(body.decode()).text["error-message"]

    status, _, _, headers = http.request("POST", f"/media/jobs/{job_id}/retry", b"",
                                         "application/x-www-form-urlencoded")
    assert status == 303 and headers["location"] == location
    assert media_stack.api("GET", f"/jobs/{job_id}")[1]["state"] in ("queued", "running")
    status, _, body = http.post(f"/media/jobs/{job_id}/retry", {}, accept="text/html")
    assert status == 409, body[:300]
    status, kind, body = http.post(f"/media/jobs/{job_id}/delete", {}, accept="text/html")
    assert status == 409 and kind.startswith("text/html")
    assert "cancel it first" in Elements(body.decode()).text["error-message"]
    assert http.post(f"/media/jobs/{job_id}/cancel", {}, accept="text/html")[0] == 303

    # Deleted once finished: back to the gallery, which no longer lists it; the job is gone.
    media_stack.wait_job(job_id)
    status, _, _, headers = http.request("POST", f"/media/jobs/{job_id}/delete", b"",
                                         "application/x-www-form-urlencoded")
    assert status == 303 and headers["location"] == "/media/"
    assert f'data-job="{job_id}"' not in http.get("/media/")[2].decode()
    assert http.get(location)[0] == 404
    status, kind, body = http.post(f"/media/jobs/{job_id}/delete", {}, accept="text/html")
    assert status == 404 and kind.startswith("text/html") and job_id in Elements(body.decode()).text["error-message"]


def test_a_finished_job_page_has_the_video_and_the_gallery_lists_it_first(media_stack):
    http = http_of(media_stack)
    job = media_stack.submit(prompt="A fox finds a red rocket in the snow", scenes=2, music=True)
    job = media_stack.wait_job(job["job_id"])
    assert job["state"] == "done", job
    job_id, files = job["job_id"], f"/media/api/jobs/{job['job_id']}/files"

    status, _, body = http.get(f"/media/jobs/{job_id}")
    assert status == 200
    html = body.decode()
    page = Elements(html)
    assert page.attrs["job"]["data-state"] == "done" and page.text["job-state"] == "done"
    assert "hidden" not in page.attrs["video-section"]
    assert page.attrs["video"]["src"] == f"{files}/video.mp4" and "controls" in page.attrs["video"]
    track = re.search(r"<video id=\"video\"[^>]*>\s*<track ([^>]*)>", html).group(1)
    assert 'kind="subtitles"' in track and f'src="{files}/subtitles.vtt"' in track
    # Burned into the frames (the app's default): not a default track, or the text would show twice.
    assert job["video"]["burned_subtitles"] is True and " default" not in track
    assert page.attrs["download"]["href"] == f"{files}/video.mp4"
    assert page.attrs["download"]["download"] == f"{job_id}.mp4"
    assert "hidden" in page.attrs["cancel-form"] and "hidden" in page.attrs["retry-form"]
    assert "hidden" not in page.attrs["delete-form"]
    assert page.text["story"] == job["story"]
    for scene in job["scenes"]:
        card = re.search(rf'<li class="scene" data-scene="{scene["index"]}">(.*?)</li>', html, re.S).group(1)
        assert f'src="{files}/scene-{scene["index"]:02d}.png"' in card
        assert f"{scene['narration_s']:.1f} s narrated" in card
        if scene["picture_source"]:   # a caption such as "a cat's face" is escaped in the page
            assert scene["picture_source"]["caption"] in markup.unescape(card)
    for model in job["models"].values():
        assert model["name"] in page.text["models"]
    assert set(job["models"]) <= {m.lower() for m in re.findall(r"<dt>(\w+)</dt>", html)}

    gallery = http.get("/media/")[2].decode()
    listed = re.findall(r'data-job="(M-[0-9a-f]{12})"', gallery)
    assert listed == [j["job_id"] for j in media_stack.api("GET", "/jobs")[1]][:len(listed)]
    assert listed[0] == job_id
    item = re.search(rf'data-job="{job_id}".*?</li>', gallery, re.S).group(0)
    assert f'src="{files}/scene-01.png"' in item and "done" in item
    seconds = round(job["video"]["duration_s"])
    assert f"{seconds // 60}:{seconds % 60:02d}" in item
    status, kind, png = http.get(f"{files}/scene-01.png", accept="image/png")
    assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")


def test_pages_answer_under_the_prefix_and_at_the_root_with_links_that_stay_there(media_stack):
    http = http_of(media_stack)
    for prefix in ("/media", ""):
        status, _, body = http.get(f"{prefix}/")
        assert status == 200
        html = body.decode()
        assert f'href="{prefix}/static/app.css"' in html and f'src="{prefix}/static/studio.js"' in html
        assert f'action="{prefix}/jobs"' in html
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', html)
        assert links and all(link.startswith(prefix + "/") for link in links), links
        for asset in ("app.css", "studio.js", "job.js"):
            status, kind, _ = http.get(f"{prefix}/static/{asset}", accept="*/*")
            assert status == 200 and ("css" in kind or "javascript" in kind), (asset, kind)
    assert http.get("/media")[0] == 200   # the prefix alone is the studio too


def test_a_full_queue_and_a_service_down_are_on_the_pages(media_stack, pki, tmp_path):
    """An app of its own, one job at a time and one waiting, whose vision service is an address nobody
    listens on: the first job fails at its pictures, the second waits, the third is refused."""
    services = {name: media_stack.services[name] for name in ("text", "audio")}
    app = start_media_app(pki, tmp_path, services, vision_address=f"127.0.0.1:{free_port()}", concurrent_jobs=1,
                          max_queued_jobs=1)
    try:
        http = Http(int(app.root.rsplit(":", 1)[1]))
        def submit() -> str:
            reply = http.request("POST", "/media/jobs", urlencode({**GOOD_FORM, "scenes": "1"}).encode(),
                                 "application/x-www-form-urlencoded")
            assert reply[0] == 303, reply[:3]
            return reply[3]["location"]
        first = submit()
        app.wait_job(first.rsplit("/", 1)[1], until=lambda job: job["state"] != "queued")
        waiting = submit()
        assert app.job(waiting.rsplit("/", 1)[1])["queue_position"] == 1
        status, kind, body = http.post("/media/jobs", GOOD_FORM, accept="text/html")
        assert status == 429 and kind.startswith("text/html")
        assert "queue" in Elements(body.decode()).text["error-message"]
        assert http.post(f"{waiting}/cancel", {}, accept="text/html")[0] == 303

        job = app.wait_job(first.rsplit("/", 1)[1], timeout=120)
        assert job["state"] == "failed" and job["error"]["step"] == "pictures", job
        page = Elements(http.get(first)[2].decode())
        assert page.text["job-error"].strip().startswith(f"The pictures step failed ({job['error']['code']})")
        assert "hidden" not in page.attrs["retry-form"] and "hidden" in page.attrs["cancel-form"]
        assert page.attrs["job"]["data-state"] == "failed"
        for path in (first, "/media/"):
            assert re.search(r'<p class="outage">vision service unavailable \(UNAVAILABLE\)',
                             http.get(path)[2].decode()), path
        assert http.post(f"{first}/retry", {}, accept="text/html")[0] == 303
        assert app.job(job["job_id"])["state"] in ("queued", "running")
    finally:
        app.app.stop(10)
