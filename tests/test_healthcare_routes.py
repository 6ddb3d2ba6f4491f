"""An unauthenticated visitor gets no patient data from any route of the healthcare app: every path the app
declares (under the gateway's prefix and at the root), its parameters filled with real ids of the demo,
asked with GET, POST and PUT, with no cookie and with a forged one, answers 303 to the sign-in form (pages)
or 401 (everything else), and no pseudonym, study id, note or measurement of a twin appears in any body.
The same paths signed in answer 200, so the walk reaches real data."""

from __future__ import annotations

import re
import secrets

import pytest
from starlette.routing import Mount, Route

from apps.healthcare.auth import Sessions, Users
from apps.healthcare.web import create_web_app
from tests.healthcare import Http, healthcare_stack  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

PUBLIC = {"/sign-in", "/sign-out"}


def declared_paths() -> list[tuple[str, set[str]]]:
    """Every route of the app as it is built for serving (the clinic is never called to list them)."""
    app = create_web_app(None, Users({}), Sessions(secrets.token_bytes(32))).app
    paths = []
    for route in app.routes:
        if isinstance(route, Route):
            paths.append((route.path, set(route.methods or ())))
        elif isinstance(route, Mount):
            paths.append((route.path + "/app.css", {"GET"}))
    return paths


def real_ids(stack) -> dict[str, str]:
    demo = stack.wait_for_demo()
    flagged = next(p for p in demo if p["open_findings"]) if any(p["open_findings"] for p in demo) else demo[0]
    twin = stack.http.json(f"/api/patients/{flagged['patient_id']}")
    study_id = next(iter(twin["features"]["imaging"]["properties"]["studies"]))
    findings = twin["features"].get("findings", {}).get("properties", {}).get("items", {})
    status, reply = stack.upload(flagged["patient_id"], b"not a study", wait=False)
    job_id = reply["job"]["job_id"] if status == 202 else "J-000000000000"
    return {"patient_id": flagged["patient_id"], "study_id": study_id, "plane": "axial", "index": "40",
            "kind": "labels", "job_id": job_id, "finding_id": next(iter(findings), "F-00000000")}


def private_values(stack) -> list[str]:
    """What must never reach a visitor: pseudonyms, study ids, asset ids, notes and measurements."""
    values = []
    for summary in stack.http.json("/api/patients"):
        twin = stack.http.json(f"/api/patients/{summary['patient_id']}")
        values += [twin["twinId"], twin["attributes"]["vitalsAsset"]]
        for study_id, study in twin["features"].get("imaging", {}).get("properties", {}).get("studies", {}).items():
            values.append(study_id)
            values += [f"{s['volumeMl']:.2f}" for s in study["structures"].values() if s["volumeMl"] > 1]
        for note in twin["features"].get("notes", {}).get("properties", {}).get("items", {}).values():
            values.append(note["summary"][:30])
    return values


def test_an_unauthenticated_visitor_gets_no_patient_data_from_any_route(healthcare_stack):
    stack = healthcare_stack
    ids = real_ids(stack)
    private = private_values(stack)
    assert len(private) > 20
    walked = 0
    for template, methods in declared_paths():
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: ids[m.group(1)], template)
        if "GET" in methods and template not in PUBLIC and not template.startswith("/static"):
            signed_in = stack.http.get(path, accept="application/json")
            assert signed_in[0] == 200, (template, signed_in[:2], signed_in[2][:200])
        for prefix in ("", "/healthcare"):
            for cookie in ("", "modalmesh_session=" + secrets.token_urlsafe(40) + "." + secrets.token_urlsafe(20)):
                visitor = Http(int(stack.http.root.rsplit(":", 1)[1]))
                visitor.cookie = cookie
                for method in ("GET", "POST", "PUT"):
                    for accept in ("text/html", "application/json"):
                        status, _, body, headers = visitor.request(method, prefix + path, b"text=x",
                                                                   "application/x-www-form-urlencoded", accept)
                        walked += 1
                        _check_refused(template, method, accept, status, headers, prefix)
                        leaked = [v for v in private if v.encode() in body]
                        assert not leaked, (template, method, leaked)
    assert walked > 300


def _check_refused(template: str, method: str, accept: str, status: int, headers, prefix: str) -> None:
    if template.startswith("/static"):
        assert status in (200, 401, 405), (template, method, status)   # the style sheet is public, and only that
        return
    if template in PUBLIC:
        assert status in (200, 303, 400, 401, 405, 429), (template, method, status)   # 429: sign-in throttled
        return
    if method == "GET" and accept == "text/html":
        assert status == 303 and headers["location"].startswith(f"{prefix}/sign-in"), (template, status)
    else:
        assert status == 401, (template, method, accept, status)
