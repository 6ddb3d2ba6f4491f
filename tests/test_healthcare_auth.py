"""Sign-in of the healthcare web app, over real sockets: a small app with the real middleware, routes and
sign-in page served by uvicorn on a free port. Pages redirect to the form, everything else is 401 with no
patient data; the right password opens the app, wrong and unknown users look alike, failures are
throttled, forged, expired and signed-out cookies are refused, ``next`` never leaves the site; the users
file, its command line and the first-start file are checked on disk."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from apps.healthcare import auth
from apps.healthcare.auth import COOKIE, Sessions, Users, ensure_users_file, hash_password, verify_password
from apps.healthcare import users as users_cli
from apps.healthcare.users import add_user, remove_user
from tests.support import ROOT, free_port, wait_for

PATIENT = "Pseudonym-7F3A"          # what must never reach someone who has not signed in
PASSWORD = "correct horse battery"
PREFIX = "/healthcare"


def patient_app(static_dir: Path) -> FastAPI:
    """Routes of every kind the real app has: a page, a JSON API, an image, an event stream, an upload,
    a download, and public static files."""
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/", response_class=HTMLResponse)
    async def patients(request: Request):
        return f"<h1>Patients</h1><p>{PATIENT}</p><p id='who'>{request.state.user}</p>"

    @app.get("/patients/{patient_id}", response_class=HTMLResponse)
    async def patient(patient_id: str):
        return f"<h1>{PATIENT}</h1>"

    @app.get("/api/patients")
    async def api_patients():
        return [{"id": PATIENT}]

    @app.get("/patients/{patient_id}/slice.png")
    async def slice_png(patient_id: str):
        return Response(PATIENT.encode(), media_type="image/png")

    @app.get("/events")
    async def events():
        async def stream():
            yield f"data: {PATIENT}\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/studies")
    async def upload(request: Request):
        return {"stored": len(await request.body()), "patient": PATIENT}

    @app.get("/studies/1/labels.nii.gz")
    async def download():
        return Response(PATIENT.encode(), media_type="application/gzip",
                        headers={"Cache-Control": "private, max-age=60"})

    return app


class UnderPrefix:
    """What the ingress gateway does: forwards /healthcare/... without stripping the prefix."""

    def __init__(self, app, prefix: str):
        self.app, self.prefix = app, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(self.prefix + "/"):
            scope = dict(scope, root_path=self.prefix)
        await self.app(scope, receive, send)


class Served:
    """uvicorn on a free port in a thread; real sockets, stopped at the end."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20)
        self.root = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


class Browser:
    """A client that keeps its cookie and does not follow redirects, so each answer is checked as sent."""

    def __init__(self, root: str, prefix: str = ""):
        self.root, self.prefix, self.cookie = root, prefix, None

    def request(self, method: str, path: str, *, accept: str = "text/html", form: dict | None = None,
                body: bytes | None = None, content_type: str | None = None, cookie: str | None = None):
        headers = {"Accept": accept, **({"Content-Type": content_type} if content_type else {})}
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        cookie = cookie if cookie is not None else self.cookie
        if cookie:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        request = urllib.request.Request(self.root + self.prefix + path, data=body, method=method, headers=headers)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=20) as reply:
                return reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def sign_in(self, user: str, password: str, next_path: str = ""):
        status, headers, body = self.request("POST", "/sign-in", form={"user": user, "password": password,
                                                                       "next": next_path})
        for header in headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name == COOKIE:
                self.cookie = rest.split(";")[0] or None
        return status, headers, body


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "static").mkdir()
    (tmp / "static" / "app.css").write_text("body { color: black; }")
    users_file = tmp / "users.txt"
    users_file.write_text(f"# test users\nclinician:{hash_password(PASSWORD)}\nradiologist:{hash_password('x' * 12)}\n")
    app = patient_app(tmp / "static")
    sessions = Sessions.from_secret_file(tmp / "session-secret")
    templates = Jinja2Templates(directory=ROOT / "apps" / "healthcare" / "templates")
    auth.install_sign_in(app, Users.load(users_file), sessions, templates)
    served = Served(UnderPrefix(app, PREFIX))
    yield served, tmp
    served.stop()


@pytest.fixture
def browser(site):
    served, _ = site
    return Browser(served.root)


def test_pages_redirect_to_the_form_and_everything_else_is_401_without_patient_data(site, browser):
    routes = [("GET", "/"), ("GET", "/patients/7"), ("GET", "/api/patients"), ("GET", "/patients/7/slice.png"),
              ("GET", "/events"), ("POST", "/studies"), ("GET", "/studies/1/labels.nii.gz"), ("GET", "/nowhere")]
    for prefix in ("", PREFIX):
        browser.prefix = prefix
        for method, path in routes:
            for accept in ("text/html,application/xhtml+xml", "application/json", "*/*", "image/png"):
                status, headers, body = browser.request(method, path, accept=accept,
                                                        body=b"study" * 10 if method == "POST" else None)
                assert PATIENT.encode() not in body, (prefix, method, path, accept)
                assert headers["Cache-Control"] == "no-store"
                if method == "GET" and accept.startswith("text/html"):
                    assert status == 303, (prefix, method, path, status)
                    assert headers["Location"] == f"{prefix}/sign-in?next={prefix}{path}"
                else:
                    assert status == 401, (prefix, method, path, accept, status)
                    assert json.loads(body) == {"error": "sign in first"}
        # The form and static files are open to everyone.
        status, headers, body = browser.request("GET", "/sign-in?next=/patients/7")
        assert status == 200 and b'id="password"' in body and PATIENT.encode() not in body
        assert f'action="{prefix}/sign-in"'.encode() in body and b'value="/patients/7"' in body
        assert browser.request("GET", "/static/app.css")[0] == 200
        # ... but not a way round the check through them.
        assert browser.request("GET", "/static/../api/patients", accept="*/*")[0] == 401


def test_signing_in_opens_every_route_and_signing_out_ends_the_session(site, browser):
    browser.prefix = PREFIX
    status, headers, _ = browser.sign_in("clinician", PASSWORD, next_path=f"{PREFIX}/patients/7")
    assert status == 303 and headers["Location"] == f"{PREFIX}/patients/7"
    cookie_header = next(h for h in headers.get_all("Set-Cookie") if h.startswith(COOKIE))
    attributes = {a.strip().split("=")[0].lower() for a in cookie_header.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie_header.lower()
    assert "secure" not in attributes   # secure_cookies=False here; plain http in the test
    status, headers, body = browser.request("GET", "/")
    assert status == 200 and PATIENT.encode() in body and b"<p id='who'>clinician</p>" in body
    assert headers["Cache-Control"] == "no-store"
    assert browser.request("GET", "/api/patients", accept="application/json")[0] == 200
    assert browser.request("GET", "/patients/7/slice.png", accept="image/png")[0] == 200
    assert browser.request("POST", "/studies", body=b"x" * 1000, accept="*/*")[2].startswith(b'{"stored":1000')
    download = browser.request("GET", "/studies/1/labels.nii.gz", accept="*/*")
    assert download[0] == 200 and download[1]["Cache-Control"] == "private, max-age=60"   # the route's own kept
    status, _, body = browser.request("GET", "/events", accept="text/event-stream")
    assert status == 200 and body == f"data: {PATIENT}\n\n".encode()
    # Already signed in: the form sends you on.
    assert browser.request("GET", "/sign-in?next=/healthcare/patients/3")[1]["Location"] == "/healthcare/patients/3"

    token = browser.cookie
    status, headers, _ = browser.request("POST", "/sign-out")
    assert status == 303 and headers["Location"] == f"{PREFIX}/sign-in"
    assert 'modalmesh_session=""' in headers["Set-Cookie"] and "max-age=0" in headers["Set-Cookie"].lower()
    # The old cookie, replayed, no longer works: sign-out revoked it on the server.
    assert browser.request("GET", "/api/patients", accept="application/json", cookie=token)[0] == 401
    # Revocation survives a restart: a new Sessions over the same secret file refuses it as well.
    _, tmp = site
    assert Sessions.from_secret_file(tmp / "session-secret").user_of(token) is None


def test_wrong_password_and_unknown_user_get_the_same_answer(browser):
    wrong = browser.sign_in("clinician", "not the password")
    unknown = browser.sign_in("nobody", "not the password")
    for status, headers, body in (wrong, unknown):
        assert status == 401 and auth.WRONG_CREDENTIALS.encode() in body
        assert headers.get("Set-Cookie") is None and b'id="password"' in body
    # The page differs only by the name typed back into the form.
    assert wrong[2].replace(b"clinician", b"nobody") == unknown[2]
    assert browser.cookie is None
    assert browser.request("GET", "/sign-in")[0] == 200


def test_unknown_users_cost_what_known_users_cost(site):
    _, tmp = site
    users = Users.load(tmp / "users.txt")

    def fastest(name):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            assert not users.verify(name, "wrong")
            times.append(time.perf_counter() - start)
        return min(times)

    known, unknown = fastest("clinician"), fastest("nobody-at-all")
    assert unknown > 0.5 * known and known > 0.01, (known, unknown)
    assert users.verify("clinician", PASSWORD) and not users.verify("clinician", PASSWORD + "x" * 2000)


def test_failed_sign_ins_are_throttled_per_user_name(browser):
    for _ in range(5):
        assert browser.sign_in("radiologist", "guess")[0] == 401
    status, headers, body = browser.sign_in("radiologist", "x" * 12)   # even the right password waits now
    assert status == 429 and b"Too many failed sign-ins" in body and int(headers["Retry-After"]) > 200
    assert browser.cookie is None
    # Another name is not held up by it.
    status, _, _ = browser.sign_in("clinician", PASSWORD)
    assert status == 303 and browser.cookie
    # Guesses sent all at once are counted as they arrive, not as their checks finish.
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: Browser(browser.root).sign_in("burst", "guess")[0], range(12)))
    assert sorted(answers) == [401] * 5 + [429] * 7


def test_the_running_app_follows_the_users_file(site, browser):
    _, tmp = site
    users_file = tmp / "users.txt"
    original = users_file.read_text()
    try:
        add_user(users_file, "locum", "temporary pass")
        assert browser.sign_in("locum", "temporary pass")[0] == 303
        assert browser.request("GET", "/api/patients", accept="application/json")[0] == 200
        remove_user(users_file, "locum")   # their session ends at once
        assert browser.request("GET", "/api/patients", accept="application/json")[0] == 401
        assert browser.sign_in("locum", "temporary pass")[0] == 401
        # A broken edit is not applied: the list in use stays.
        users_file.write_text(original + "not a user line\n")
        assert browser.sign_in("clinician", PASSWORD)[0] == 303
        assert browser.request("GET", "/api/patients", accept="application/json")[0] == 200
    finally:
        users_file.write_text(original)


def test_forged_malformed_and_expired_cookies_are_refused(site, browser):
    _, tmp = site
    good = Sessions.from_secret_file(tmp / "session-secret").issue("clinician")
    assert browser.request("GET", "/api/patients", accept="application/json", cookie=good)[0] == 200
    payload, signature = good.split(".")
    other_user = auth._b64(auth._unb64(payload).replace(b"clinician", b"radiologist"))
    forged = [
        Sessions(os.urandom(32)).issue("clinician"),                 # signed with another secret
        f"{other_user}.{signature}",                                 # someone else's name under this signature
        f"{payload}.{signature[:-2]}AA",                             # a changed signature
        payload, "garbage", "a.b.c", "." * 10, "x" * 5000, "%00",
    ]
    for token in forged:
        assert browser.request("GET", "/api/patients", accept="application/json", cookie=token)[0] == 401, token
    expiring = Sessions.from_secret_file(tmp / "session-secret", max_age_s=1).issue("clinician")
    time.sleep(1.1)
    assert browser.request("GET", "/api/patients", accept="application/json", cookie=expiring)[0] == 401
    # A token made under a longer max age than the app now allows is refused too.
    long_lived = Sessions.from_secret_file(tmp / "session-secret", max_age_s=30 * 24 * 3600).issue("clinician")
    assert Sessions.from_secret_file(tmp / "session-secret").user_of(long_lived) is None


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "\\\\evil",
                                    "javascript:alert(1)", "evil.example", "/ok\r\nSet-Cookie: x=1", "", "  /x"])
def test_next_never_leaves_the_site(site, target):
    served, _ = site
    browser = Browser(served.root, PREFIX)
    status, headers, _ = browser.sign_in("clinician", PASSWORD, next_path=target)
    assert status == 303 and headers["Location"] == f"{PREFIX}/"
    form = browser.request("GET", "/sign-in?" + urllib.parse.urlencode({"next": target}), cookie="")
    assert form[0] == 200 and b'name="next" value=""' in form[2]


def test_bad_sign_in_forms_are_400(browser):
    status, _, body = browser.request("POST", "/sign-in", body=b'{"user": "clinician", "password": "x"}',
                                      content_type="application/json", accept="*/*")
    assert status == 400 and b"urlencoded" in body and browser.cookie is None
    status, _, body = browser.request("POST", "/sign-in", form={"user": "clinician", "password": "x" * 20_000})
    assert status == 400 and b"under 16 KiB" in body
    status, _, body = browser.request("POST", "/sign-in", body=b"user=%ff%fe&password=x",
                                      content_type="application/x-www-form-urlencoded")
    assert status in (400, 401) and b"Traceback" not in body


def test_passwords_hash_and_verify():
    encoded = hash_password("s3cret")
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "32768", "8", "1") and salt and key
    assert verify_password("s3cret", encoded) and not verify_password("s3cret ", encoded)
    assert hash_password("s3cret") != encoded   # salted
    for broken in ("", "scrypt$1$8$1$AAAA$AAAA", encoded.replace("scrypt", "md5"), encoded[:-3],
                   "scrypt$1099511627776$8$1$" + encoded.split("$", 4)[4]):
        assert not verify_password("s3cret", broken)


def test_users_command_line_as_a_program(tmp_path):
    path = tmp_path / "users.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODALMESH_USERS_FILE": str(path)}
    added = subprocess.run([sys.executable, "-m", "apps.healthcare.users", "add", "dr.lee", "--password-stdin"],
                           input="from stdin\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert added.returncode == 0 and f"added dr.lee in {path}" in added.stdout
    assert Users.load(path).verify("dr.lee", "from stdin")   # found through MODALMESH_USERS_FILE
    assert "from stdin" not in added.stdout + added.stderr


def test_users_file_round_trip_and_clear_errors(tmp_path, monkeypatch, capsys):
    path = tmp_path / "users.txt"

    def cli(*args, stdin=""):
        """The command line's main, in this process: its exit status, output and errors."""
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        returncode = users_cli.main([*args, "--file", str(path)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, returncode, out, err)

    assert cli("add", "dr.lee", "--password-stdin", stdin="first password\n").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli("add", "nurse-2", "--password-stdin", stdin="second password\n").returncode == 0
    assert cli("list").stdout.split() == ["dr.lee", "nurse-2"]
    users = Users.load(path)
    assert len(users) == 2 and users.verify("dr.lee", "first password") and users.verify("nurse-2", "second password")
    # add again: the password changes, the comment at the top stays.
    assert cli("add", "dr.lee", "--password-stdin", stdin="changed\n").returncode == 0
    assert Users.load(path).verify("dr.lee", "changed") and path.read_text().startswith("#")
    assert cli("remove", "nurse-2").returncode == 0 and Users.load(path).names() == ["dr.lee"]
    refused = cli("remove", "nurse-2")
    assert refused.returncode != 0 and "no user nurse-2" in refused.stderr
    refused = cli("add", "bad name", "--password-stdin", stdin="pw\n")
    assert refused.returncode != 0 and "user name" in refused.stderr and "Traceback" not in refused.stderr
    assert cli("add", "empty", "--password-stdin", stdin="\n").returncode != 0

    secret_hash = hash_password("hunter2")
    path.write_text(f"dr.lee:{secret_hash}\n\n# fine\nbroken line {secret_hash}\n")
    with pytest.raises(ValueError, match=r"line 4") as error:
        Users.load(path)
    assert secret_hash.split("$")[-1] not in str(error.value) and "hunter2" not in str(error.value)
    path.write_text(f"dr.lee:{secret_hash}\ndr.lee:{secret_hash}\n")
    with pytest.raises(ValueError, match="line 2: user dr.lee is listed twice"):
        Users.load(path)
    path.write_text("dr.lee:scrypt$32768$8$1$AAAA\n")
    with pytest.raises(ValueError, match="line 1: not a scrypt"):
        Users.load(path)
    listing = cli("list")
    assert listing.returncode != 0 and "line 1" in listing.stderr and "Traceback" not in listing.stderr


def test_first_start_creates_one_user_with_a_private_password(tmp_path):
    path = tmp_path / "data" / "healthcare" / "users.txt"
    password = ensure_users_file(path)
    assert password and len(password) >= 12
    initial = path.with_name("initial-password")
    assert initial.read_text().strip() == password
    for created in (path, initial):
        assert stat.S_IMODE(created.stat().st_mode) == 0o600
    users = Users.load(path)
    assert users.names() == ["clinician"] and users.verify("clinician", password)
    assert ensure_users_file(path) is None and Users.load(path).verify("clinician", password)   # kept as it was


def test_the_session_secret_is_private_and_survives_restarts(tmp_path):
    path = tmp_path / "secrets" / "session-secret"
    token = Sessions.from_secret_file(path).issue("clinician")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert Sessions.from_secret_file(path).user_of(token) == "clinician"
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        Sessions.from_secret_file(path)
