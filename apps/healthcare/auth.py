"""Sign-in for the healthcare web app: every page, image, download and API route needs a session.

The users are a configured list (a text file of ``name:<scrypt hash>`` lines, managed with
``python -m apps.healthcare.users``). A session is a signed, expiring cookie: HMAC-SHA256 with a
32-byte secret kept in a file, so sessions survive restarts of the app. Signing out revokes the
session's token on the server as well as deleting the cookie, so a copied cookie stops working too.

In a cluster the ingress can sign people in with OIDC instead (docs/healthcare.md, "Sign-in").
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

log = logging.getLogger(__name__)

COOKIE = "modalmesh_session"
SIGN_IN, SIGN_OUT = "/sign-in", "/sign-out"

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_PASSWORD_CHARS = 1024
MAX_FORM_BYTES = 16 * 1024
MAX_TOKEN_CHARS = 512
WRONG_CREDENTIALS = "Wrong user name or password."


# ---------------------------------------------------------------- passwords

@dataclass(frozen=True)
class ScryptCost:
    """scrypt's work factors. The default costs about 0.15 s and 32 MiB per check on one core: slow
    enough to make guessing a stolen users file expensive, fast enough for a sign-in."""

    n: int = 2 ** 15
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Bounds, so a hand-edited users file cannot make each sign-in take gigabytes."""
        if not (2 ** 10 <= self.n <= 2 ** 20 and self.n & (self.n - 1) == 0):
            raise ValueError("scrypt n must be a power of two from 2^10 to 2^20")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16 and 128 * self.r * self.n <= 256 * 2 ** 20):
            raise ValueError("scrypt r must be 1 to 32, p 1 to 16, and 128*r*n at most 256 MiB")

    def derive(self, password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode(), salt=salt, n=self.n, r=self.r, p=self.p, dklen=32,
                              maxmem=128 * self.r * (self.n + self.p + 2) + 2 ** 20)


def hash_password(password: str, cost: ScryptCost = ScryptCost()) -> str:
    """``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``: everything needed to check it again."""
    cost.check()
    salt = secrets.token_bytes(16)
    key = cost.derive(password, salt)
    return f"scrypt${cost.n}${cost.r}${cost.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True only when ``password`` is the one ``encoded`` was made from; False for anything malformed."""
    try:
        cost, salt, key = parse_password_hash(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(cost.derive(password, salt), key)


def parse_password_hash(encoded: str) -> tuple[ScryptCost, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$n$r$p$salt$hash password hash")
    try:
        cost = ScryptCost(int(parts[1]), int(parts[2]), int(parts[3]))
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("the password hash's numbers or base64 are malformed") from None
    cost.check()
    if len(salt) < 8 or len(key) != 32:
        raise ValueError("the password hash's salt or key has the wrong length")
    return cost, salt, key


# ---------------------------------------------------------------- users

class Users:
    """The configured user list: a text file, one ``name:<hash_password output>`` per line, '#' comments.

    Loaded from a file, it follows the file: a change (``python -m apps.healthcare.users``) is read at the
    next sign-in or request, so a removed user's sessions end at once and no restart is needed. A change
    that does not parse is logged and the list in use is kept."""

    def __init__(self, hashes: dict[str, str], path: Path | None = None):
        self._path, self._stamp = path, _file_stamp(path)
        self._dummy = ""
        self._use(hashes)

    @classmethod
    def load(cls, path: Path) -> Users:
        path = Path(path)
        return cls(parse_users(path.read_text(encoding="utf-8"), str(path)), path)

    def verify(self, name: str, password: str) -> bool:
        hashes, dummy = self._current()
        encoded = hashes.get(name)
        too_long = len(password) > MAX_PASSWORD_CHARS
        matches = verify_password(password[:MAX_PASSWORD_CHARS], encoded or dummy)
        return matches and encoded is not None and not too_long

    def names(self) -> list[str]:
        return sorted(self._current()[0])

    def __contains__(self, name: str) -> bool:
        return name in self._current()[0]

    def __len__(self) -> int:
        return len(self._current()[0])

    def _use(self, hashes: dict[str, str]) -> None:
        # An unknown name is checked against a dummy hash of the same cost as a listed user's, so the time
        # of a refusal does not tell which names exist.
        cost = parse_password_hash(next(iter(hashes.values())))[0] if hashes else ScryptCost()
        dummy = self._dummy if self._dummy and parse_password_hash(self._dummy)[0] == cost else \
            hash_password(secrets.token_urlsafe(16), cost)
        self._dummy = dummy
        self._state = (dict(hashes), dummy)   # one assignment: threads checking passwords see old or new

    def _current(self) -> tuple[dict[str, str], str]:
        stamp = _file_stamp(self._path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._use(parse_users(self._path.read_text(encoding="utf-8"), str(self._path)))
                log.info("users file reloaded")
            except (OSError, ValueError) as error:
                log.error("users file changed but could not be read; the previous list stays in use: %s", error)
        return self._state


def _file_stamp(path: Path | None) -> tuple | None:
    """What changes when the file does (a replaced file has a new inode), without reading it."""
    if path is None:
        return None
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def parse_users(text: str, source: str = "users file") -> dict[str, str]:
    """Names to hashes. A malformed line is a ValueError naming its line number, never its content,
    which may hold a hash."""
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, encoded = line.partition(":")
        if not colon or not USER_NAME.fullmatch(name):
            raise ValueError(f"{source}, line {number}: expected name:hash, the name made of letters, digits "
                             "and . _ @ - (at most 64)")
        try:
            parse_password_hash(encoded)
        except ValueError as error:
            raise ValueError(f"{source}, line {number}: {error}") from None
        if name in hashes:
            raise ValueError(f"{source}, line {number}: user {name} is listed twice")
        hashes[name] = encoded
    return hashes


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise ValueError("a user name is 1 to 64 letters, digits and . _ @ -, starting with a letter or digit")
    return name


def ensure_users_file(path: Path, user: str = "clinician") -> str | None:
    """First start: create the file (mode 0600, parent dirs) with one user and a random password, write that
    password to path.with_name("initial-password") (mode 0600) and return it; None when the file exists already."""
    path = Path(path)
    if path.exists():
        return None
    password = secrets.token_urlsafe(12)
    text = ("# Users of the healthcare web app: name:scrypt hash. Manage with python -m apps.healthcare.users\n"
            f"{check_user_name(user)}:{hash_password(password)}\n")
    if not write_private(path, text.encode(), exclusive=True):
        return None   # another process created it first
    write_private(path.with_name("initial-password"), (password + "\n").encode())
    return password


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write a file only its owner can read, whole or not at all (a reader never sees half of it).
    With ``exclusive``, an existing file is kept and False returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")   # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- sessions

class Sessions:
    """Signed, expiring session cookies: HMAC-SHA256 over user + issued-at + expiry (and a nonce, so each
    session can be revoked alone). The secret is 32 random bytes kept in a file (mode 0600) so sessions
    survive restarts; revoked tokens are kept beside it until they would have expired anyway."""

    def __init__(self, secret: bytes, max_age_s: int = 8 * 3600, revoked_file: Path | None = None):
        if len(secret) < 32:
            raise ValueError("the session secret must be at least 32 bytes")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self._secret, self.max_age_s, self._revoked_file = secret, int(max_age_s), revoked_file
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = self._read_revoked()

    @classmethod
    def from_secret_file(cls, path: Path, max_age_s: int = 8 * 3600) -> Sessions:
        """Creates the secret when missing."""
        path = Path(path)
        if not path.exists():
            write_private(path, secrets.token_bytes(32), exclusive=True)   # two starting at once: one wins
        secret = path.read_bytes()
        if len(secret) != 32:
            raise ValueError(f"{path} must hold exactly 32 bytes; delete it to make a new one "
                             "(everyone is signed out)")
        return cls(secret, max_age_s, revoked_file=path.with_name(path.name + ".revoked"))

    def issue(self, user: str) -> str:
        now = int(time.time())
        payload = f"{check_user_name(user)}:{now}:{now + self.max_age_s}:{secrets.token_hex(8)}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def user_of(self, token: str | None) -> str | None:
        """None when missing, forged, malformed, revoked or expired."""
        parsed = self._verified(token)
        return parsed[0] if parsed else None

    def revoke(self, token: str | None) -> None:
        parsed = self._verified(token)
        if parsed is None:
            return
        _, expires, signature = parsed
        with self._lock:
            self._revoked[signature] = expires
            if self._revoked_file is not None:
                self._write_revoked()

    def _verified(self, token: str | None) -> tuple[str, int, str] | None:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            return None
        encoded_payload, encoded_signature = token.split(".")
        try:
            payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            user, issued, expires, _ = payload.decode().split(":")
            issued, expires = int(issued), int(expires)
        except ValueError:
            return None
        now = time.time()
        if not (issued - 60 <= now < expires and expires - issued <= self.max_age_s):
            return None   # expired, from the future, or made under a longer max age than now
        if encoded_signature in self._revoked:
            return None
        return user, expires, encoded_signature

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, b"modalmesh-session-v1\0" + payload, hashlib.sha256).digest()

    def _read_revoked(self) -> dict[str, int]:
        if self._revoked_file is None or not self._revoked_file.exists():
            return {}
        revoked, now = {}, time.time()
        for line in self._revoked_file.read_text().splitlines():
            signature, _, expires = line.partition(" ")
            if expires.isdigit() and int(expires) > now:
                revoked[signature] = int(expires)
        return revoked

    def _write_revoked(self) -> None:
        now = time.time()
        self._revoked = {s: e for s, e in self._revoked.items() if e > now}   # forget what has expired
        write_private(self._revoked_file, "".join(f"{s} {e}\n" for s, e in self._revoked.items()).encode())


# ---------------------------------------------------------------- throttling

class FailedSignIns:
    """At most ``limit`` failed sign-ins per user name per ``period_s``; known and unknown names alike,
    so the throttle does not tell which names exist either."""

    MAX_NAMES = 10_000   # names tracked at once; the oldest are forgotten first

    def __init__(self, limit: int = 5, period_s: float = 300.0, clock=time.monotonic):
        self.limit, self.period_s, self._clock = limit, period_s, clock
        self._failures: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def retry_after_s(self, name: str) -> float:
        """0 when ``name`` may try now, else the seconds until it may."""
        recent = self._recent(name)
        if len(recent) < self.limit:
            return 0.0
        return max(1.0, recent[-self.limit] + self.period_s - self._clock())

    def record(self, name: str) -> None:
        recent = self._recent(name)
        recent.append(self._clock())
        self._failures[name[:128]] = recent
        self._failures.move_to_end(name[:128])
        while len(self._failures) > self.MAX_NAMES:
            self._failures.popitem(last=False)

    def clear(self, name: str) -> None:
        self._failures.pop(name[:128], None)

    def _recent(self, name: str) -> list[float]:
        since = self._clock() - self.period_s
        return [t for t in self._failures.get(name[:128], ()) if t > since]


# ---------------------------------------------------------------- the web app

def install_sign_in(app: FastAPI, users: Users, sessions: Sessions, templates: Jinja2Templates, *,
                    public_paths: tuple[str, ...] = ("/static/",), secure_cookies: bool = False,
                    throttle: FailedSignIns | None = None) -> None:
    """GET /sign-in (the form; ?next= kept), POST /sign-in, POST /sign-out, and in front of every other route:
    no valid session -> a page request is redirected (303) to the sign-in form, anything else gets 401 with
    {"error": "sign in first"}. The signed-in user's name is ``request.state.user``. ``public_paths``:
    paths open without a session (one ending in '/' opens everything under it)."""
    throttle = throttle or FailedSignIns()
    # scrypt is deliberately slow: at most two checks at once keep a flood of sign-ins from taking
    # every core the pages need.
    checks = asyncio.Semaphore(2)

    def form_page(request: Request, status: int, error: str | None = None, user: str = "",
                  next_path: str = "", headers: dict | None = None) -> HTMLResponse:
        response = templates.TemplateResponse(request, "sign_in.html", {
            "root_path": _root_path(request), "error": error, "user": user, "next": next_path},
            status_code=status, headers=headers)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def sign_in_form(request: Request):
        next_path = request.query_params.get("next", "")
        if request.state.user:
            return RedirectResponse(_local_or_home(next_path, request), status_code=303)
        return form_page(request, 200, next_path=next_path if _is_local(next_path) else "")

    async def sign_in(request: Request):
        form = await _read_form(request)
        if form is None:
            return form_page(request, 400, "Send the form as application/x-www-form-urlencoded, under 16 KiB.")
        name, password, next_path = form.get("user", ""), form.get("password", ""), form.get("next", "")
        next_path = next_path if _is_local(next_path) else ""
        wait_s = throttle.retry_after_s(name)
        if wait_s:
            log.warning("sign-in refused: too many failures for one user name")
            return form_page(request, 429, f"Too many failed sign-ins for this user name. Try again in "
                             f"{_minutes(wait_s)}.", name, next_path, headers={"Retry-After": str(int(wait_s))})
        throttle.record(name)   # before the check, so attempts sent at once count against the limit too
        async with checks:
            accepted = await asyncio.to_thread(users.verify, name, password)
        if not accepted:
            log.warning("sign-in refused: wrong user name or password")
            return form_page(request, 401, WRONG_CREDENTIALS, name, next_path)
        throttle.clear(name)
        log.info("signed in", extra={"user": name})
        response = RedirectResponse(_local_or_home(next_path, request), status_code=303)
        response.set_cookie(COOKIE, sessions.issue(name), max_age=sessions.max_age_s, path="/",
                            httponly=True, samesite="strict", secure=secure_cookies)
        return response

    async def sign_out(request: Request):
        sessions.revoke(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{_root_path(request)}{SIGN_IN}", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure_cookies)
        return response

    app.add_api_route(SIGN_IN, sign_in_form, methods=["GET"], include_in_schema=False)
    app.add_api_route(SIGN_IN, sign_in, methods=["POST"], include_in_schema=False)
    app.add_api_route(SIGN_OUT, sign_out, methods=["POST"], include_in_schema=False)
    app.add_middleware(SignInRequired, sessions=sessions, users=users,
                       public_paths=(SIGN_IN, SIGN_OUT, *public_paths))


class SignInRequired:
    """ASGI middleware (not BaseHTTPMiddleware, so event streams and downloads pass through untouched)."""

    def __init__(self, app, sessions: Sessions, users: Users, public_paths: tuple[str, ...]):
        self.app, self.sessions, self.users, self.public_paths = app, sessions, users, public_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        user = self.sessions.user_of(request.cookies.get(COOKIE))
        if user is not None and user not in self.users:
            user = None   # removed from the users file since signing in
        scope.setdefault("state", {})["user"] = user
        if self._public(_route_path(scope)):
            return await self.app(scope, receive, send)
        if user is None:
            return await self._refuse(request, scope, receive, send)
        await self.app(scope, receive, _no_store(send))

    def _public(self, path: str) -> bool:
        if any(segment in (".", "..") for segment in path.split("/")):
            return False   # never let /static/../something reach a protected route unchecked
        return any(path.startswith(p) if p.endswith("/") else path == p for p in self.public_paths)

    @staticmethod
    async def _refuse(request: Request, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})   # policy violation
        if request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", ""):
            target = scope.get("path", "/") + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"{_root_path(request)}{SIGN_IN}?next={quote(target, safe='/')}",
                                        status_code=303)
        else:
            response = JSONResponse({"error": "sign in first"}, status_code=401)
        response.headers["Cache-Control"] = "no-store"
        await response(scope, receive, send)


def _no_store(send):
    """Responses that carry patient data are never cached by the browser or a proxy, unless the route
    said otherwise."""
    async def sending(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(key.lower() == b"cache-control" for key, _ in headers):
                message = dict(message, headers=[*headers, (b"cache-control", b"no-store")])
        await send(message)
    return sending


async def _read_form(request: Request) -> dict[str, str] | None:
    """An urlencoded form (python-multipart is not needed for that): the last value of each field; None
    when it is not one or is too large."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except (UnicodeDecodeError, ValueError):
        return None


def _is_local(target: str | None) -> bool:
    """A path on this site: never a scheme, another host (//host, /\\host) or control characters."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def _local_or_home(target: str, request: Request) -> str:
    return target if _is_local(target) else f"{_root_path(request)}/"


def _root_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _route_path(scope) -> str:
    """The path the app's routes see: without the prefix the app is mounted under."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64") from None
