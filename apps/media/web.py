"""The media studio's web app: the pages, and the JSON API (apps/media/api.py) under /api.

Like every app, it answers under the gateway's path prefix (``/media/``) and at ``/``.
"""

from __future__ import annotations

from fastapi import FastAPI

from apps.media.api import api_router
from apps.media.studio import Studio
from apps.web import PathPrefix


def create_web_app(studio: Studio, path_prefix: str = "/media") -> PathPrefix:
    app = FastAPI(title="modalmesh media studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(api_router(studio), prefix="/api")
    return PathPrefix(app, path_prefix)
