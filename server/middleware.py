"""ASGI middleware: the request-body cap, rate-limit headers, access log, metrics, last-resort 500.

:class:`BodyLimitMiddleware` rejects a body over ``max_body_bytes`` with 413
``request_too_large``, from ``Content-Length`` before reading when the client declares it,
and otherwise while the body streams in.

:class:`AccessMiddleware` wraps everything else.  It adds the caller's rate-limit headers
to every response, errors included.  It logs one line per request (key id, method, path,
status, error code, samples charged, quota left, milliseconds), at INFO or, for a
rejection, at WARNING, and records the request in the Prometheus metrics.  It also turns
an unhandled exception into a JSON 500 ``internal_error`` that reveals no internals.
Route handlers report through ``scope["state"]``: ``samples_charged`` and ``quota_left``
after a charge and, for errors, ``error_code``.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import KeyRing, Principal
from server.errors import ApiError, error_response
from server.limiter import Limiter
from server.metrics import Metrics

__all__ = ["AccessMiddleware", "BodyLimitMiddleware"]

logger = logging.getLogger(__name__)


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_body_bytes`` with 413 ``request_too_large``.

    Parameters
    ----------
    app : ASGI app
    max_body_bytes : int
        Largest accepted body in bytes.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self, size: int) -> ApiError:
        return ApiError(
            413,
            "request_too_large",
            f"request body has {size} bytes but this server accepts at most "
            f"{self.max_body_bytes}; send fewer prompts or sequences per request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            error = self._too_large(declared)
            scope.setdefault("state", {})["error_code"] = error.code
            response = error_response(error.status_code, error.code, error.message)
            await response(scope, receive, send)
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI re-raises HTTPException subclasses from body reading, so
                    # this reaches the ApiError handler and becomes a JSON 413.
                    raise self._too_large(received)
            return message

        await self.app(scope, receive_limited, send)


class AccessMiddleware:
    """Add rate-limit headers to every response, log each request, and catch crashes.

    Parameters
    ----------
    app : ASGI app
    keyring : KeyRing
        Identifies the caller from the ``Authorization`` header.
    limiter : Limiter
        Source of the rate-limit headers and the quota left.
    metrics : Metrics
        Records each request.
    """

    def __init__(self, app: ASGIApp, keyring: KeyRing, limiter: Limiter, metrics: Metrics) -> None:
        self.app = app
        self.keyring = keyring
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        state = scope.setdefault("state", {})
        principal = self.keyring.identify(Headers(scope=scope).get("authorization"))
        status = 500
        started = False
        began = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                for name, value in self.limiter.headers(principal).items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            state["error_code"] = "internal_error"
            response = error_response(
                500, "internal_error", "internal server error; report it to the server operator"
            )
            await response(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - began
            self._record(scope, state, status, seconds)
            self._log(scope, state, principal, status, seconds)

    def _record(self, scope: Scope, state: dict[str, object], status: int, seconds: float) -> None:
        route = scope.get("route")
        samples = state.get("samples_charged", 0) if status < 400 else 0
        self.metrics.observe(
            getattr(route, "path", None),
            str(scope.get("method")),
            status,
            seconds,
            _optional_str(state.get("error_code")),
            samples if isinstance(samples, int) else 0,
        )

    def _log(
        self,
        scope: Scope,
        state: dict[str, object],
        principal: Principal | None,
        status: int,
        seconds: float,
    ) -> None:
        level = logging.INFO if status < 400 else logging.WARNING
        logger.log(
            level,
            "key=%s %s %s status=%d code=%s samples=%s quota_left=%s ms=%.1f",
            principal.key_id if principal else "-",
            scope.get("method"),
            scope.get("path"),
            status,
            state.get("error_code", "-"),
            state.get("samples_charged", 0),
            self._quota_left(state, principal),
            1000.0 * seconds,
        )

    def _quota_left(self, state: dict[str, object], principal: Principal | None) -> object:
        """Return the caller's quota left for the log: a count, ``unlimited``, or ``-``."""
        if principal is None:
            return "-"
        if "quota_left" in state:
            quota = state["quota_left"]
        else:
            try:
                quota = self.limiter.quota_remaining(principal)
            except ApiError:
                return "unknown"
        return "unlimited" if quota is None else quota


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _content_length(scope: Scope) -> int | None:
    """Return the declared ``Content-Length`` of the request, or None if absent or invalid."""
    value = Headers(scope=scope).get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
