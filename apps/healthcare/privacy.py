"""Patient data never reaches the logs: what the app logs of an error is its type and where it happened,
never its message, which can quote a pseudonym, a study id or a value."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable

import grpc

log = logging.getLogger(__name__)


def error_fields(error: BaseException) -> dict:
    return {"error_type": type(error).__name__,
            "where": "".join(traceback.format_tb(error.__traceback__)[-3:]).strip()}


async def every(interval_s: float, step: Callable[[], Awaitable[object]], what: str,
                unavailable: Callable[[grpc.aio.AioRpcError], None] | None = None) -> None:
    """Run `step` every `interval_s` until cancelled. A failed pass is logged by status code or error type only,
    and the next pass tries again: a service or database hiccup must not stop the loop for good."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as error:
            if unavailable is not None:
                unavailable(error)
            log.warning(f"{what}: a service is unavailable", extra={"code": error.code().name})
        except Exception as error:
            log.error(f"{what} failed; retrying", extra=error_fields(error))
        await asyncio.sleep(interval_s)
