"""Error responses: every failure becomes JSON ``{"error": {"code": ..., "message": ...}}``.

Codes and statuses
------------------
400 ``malformed_json``           the body is not valid JSON
401 ``missing_api_key``          no ``Authorization: Bearer`` header
401 ``invalid_api_key``          unknown key or malformed header
403 ``admin_required``           admin-only route called without the admin key
403 ``probabilities_disabled``   ``next_token_probs`` requested but the oracle is off
404 ``not_found``                unknown path
405 ``method_not_allowed``       known path, wrong method
413 ``request_too_large``        body, token count or sample count over a server limit
415 ``unsupported_media_type``   body sent without a JSON content type
422 ``invalid_request``          schema violation or a per-request limit (field and value named)
422 ``invalid_token``            token id outside ``0 .. A-1``
422 ``prompt_too_long``          prompt of ``H`` tokens or more
422 ``sequence_too_long``        judged sequence longer than ``H``
422 ``zero_probability_prompt``  prompt the model cannot generate
429 ``rate_limited``             window exhausted; ``Retry-After`` says when to retry
429 ``quota_exhausted``          lifetime quota spent; no retry helps
500 ``internal_error``           a server bug; the message never contains internals
503 ``limiter_unavailable``      the rate-limit storage (Redis) cannot be reached; nothing
                                 was charged or served; ``Retry-After`` is set
503 ``ledger_unavailable``       the usage ledger cannot be read or written; nothing was
                                 charged or served; ``Retry-After`` is set
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.protocol import ErrorBody, ErrorDetail

__all__ = ["ApiError", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)

# Statuses that Starlette raises itself, mapped to our codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "missing_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}
_MAX_ERRORS_LISTED = 5
_MAX_VALUE_CHARS = 80


class ApiError(StarletteHTTPException):
    """A failure with a stable error code, turned into an error response by the app.

    It subclasses Starlette's ``HTTPException`` because FastAPI re-raises those unchanged
    when they come out of reading the request body, which the body-size guard relies on.

    Parameters
    ----------
    status_code : int
        HTTP status.
    code : str
        Machine-readable error code.
    message : str
        What was wrong, with the value and how to fix it.
    headers : mapping, optional
        Extra response headers, such as ``Retry-After``.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}))
        self.code = code
        self.message = message


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Build the JSON error response for ``code``."""
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _respond(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build an error response and record its code for the access log."""
    request.state.error_code = code
    return error_response(status_code, code, message, headers)


# The detail of the 400 that FastAPI raises when it cannot decode a JSON body at all.
_FASTAPI_PARSE_FAILURE = "There was an error parsing the body"


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):
        raise TypeError(f"expected ApiError, got {type(exc).__name__}") from exc
    return _respond(request, exc.status_code, exc.code, exc.message, exc.headers)


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise TypeError(f"expected HTTPException, got {type(exc).__name__}") from exc
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route {request.url.path}; the API lives under /v1 (see /openapi.json)"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 400 and exc.detail == _FASTAPI_PARSE_FAILURE:
        # FastAPI raises this when the body is not UTF-8 or nests too deeply to decode.
        code = "malformed_json"
        message = "request body could not be decoded as JSON (not UTF-8, or nested too deeply); send a flat JSON object in UTF-8"
    else:
        message = str(exc.detail)
    return _respond(request, exc.status_code, code, message, exc.headers)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise TypeError(f"expected RequestValidationError, got {type(exc).__name__}") from exc
    errors = exc.errors()
    for error in errors:
        response = _body_format_error(request, error)
        if response is not None:
            return response
    described = [_describe(error) for error in errors[:_MAX_ERRORS_LISTED]]
    if len(errors) > _MAX_ERRORS_LISTED:
        described.append(f"and {len(errors) - _MAX_ERRORS_LISTED} more errors")
    return _respond(request, 422, "invalid_request", "invalid request: " + "; ".join(described))


def _body_format_error(request: Request, error: Mapping[str, Any]) -> JSONResponse | None:
    """Return a 400 or 415 response if ``error`` means the body is not JSON at all."""
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        position = error["loc"][-1] if error.get("loc") else "?"
        return _respond(
            request,
            400,
            "malformed_json",
            f"request body is not valid JSON: {reason} at character {position}; send a JSON object",
        )
    if tuple(error.get("loc", ())) == ("body",) and isinstance(error.get("input"), bytes):
        # FastAPI passes the raw bytes on when the content type is not JSON.
        content_type = request.headers.get("content-type", "none")
        return _respond(
            request,
            415,
            "unsupported_media_type",
            "request body must be JSON sent with Content-Type: application/json; got "
            f"content type {content_type!r}",
        )
    return None


def _describe(error: Mapping[str, Any]) -> str:
    """Describe one pydantic error as ``field: problem (got value)``."""
    field = _field_name(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "missing":
        if field == "body":
            return "request body is missing; send a JSON object"
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"unknown field {field}; remove it (see /openapi.json for the fields)"
    value = repr(error.get("input"))
    if len(value) > _MAX_VALUE_CHARS:
        value = value[: _MAX_VALUE_CHARS - 3] + "..."
    return f"{field}: {error.get('msg', 'invalid value')} (got {value})"


def _field_name(location: Sequence[Any]) -> str:
    """Render a pydantic location such as ``("body", "prompts", 0, 2)`` as ``prompts[0][2]``."""
    parts = list(location)
    if len(parts) > 1 and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += ("." if name else "") + str(part)
    return name or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(ApiError, _handle_api_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
