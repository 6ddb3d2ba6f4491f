"""Patient data never reaches the logs: what the app logs of an error is its type and where it happened,
never its message, which can quote a pseudonym, a study id or a value."""

from __future__ import annotations

import traceback


def error_fields(error: BaseException) -> dict:
    return {"error_type": type(error).__name__,
            "where": "".join(traceback.format_tb(error.__traceback__)[-3:]).strip()}
