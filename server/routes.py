"""Route handlers of the v1 wire protocol.

``GET /v1/model``
    Public metadata of the hosted model: id, alphabet, horizon, which oracles are on, and,
    when called with a valid key, that key's limits.  Never the parameters or the rank.
``POST /v1/complete``
    Sampled completions (or exact next-token laws) of prompts.  Client keys are
    rate-limited and charged against their quota.  The admin key is accepted too, with no
    rate limit or quota, so that an evaluator can draw reference samples.  The
    per-request size limits still apply to the admin key.
``POST /v1/judge/logprob``
    Exact log-probabilities of sequences; admin key only.
``GET /v1/usage``
    The caller's totals, quota left and limits, read from the usage ledger.
``GET /healthz``
    Liveness; no key needed.
``GET /metrics``
    Prometheus metrics in the text format; no key needed, and no metric names a key.

The OpenAPI document declares every error status that a route can return, each with the
``ErrorBody`` schema, so that clients and schema-based fuzzers can check responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from server.auth import KeyRing, Principal
from server.judge import judge_log_probs
from server.ledger import Charge
from server.limiter import Limiter
from server.metrics import Metrics
from server.sampling import plan_request, serve_plan
from server.settings import Settings
from shared.model import SequenceModel
from shared.protocol import (
    CompleteRequest,
    CompleteResponse,
    ErrorBody,
    Health,
    JudgeRequest,
    JudgeResponse,
    ModelInfo,
    Oracles,
    UsageReport,
)

__all__ = ["ServerState", "router"]

logger = logging.getLogger(__name__)

# Requests returning fewer tokens than this are sampled on the event loop: below it the
# hop to a worker thread costs about as much as the sampling itself.
INLINE_TOKEN_LIMIT = 20_000
INLINE_JUDGE_SEQUENCES = 1_000

RngFactory = Callable[[int | None], np.random.Generator]


@dataclass(frozen=True)
class ServerState:
    """Everything the handlers share, stored on ``app.state.server``."""

    settings: Settings
    model: SequenceModel
    model_id: str
    keyring: KeyRing
    limiter: Limiter
    metrics: Metrics
    rng_factory: RngFactory


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


# Declares the Bearer scheme in the OpenAPI document.  The KeyRing does the checking,
# so that a missing key and a malformed header get different error codes.
_bearer = HTTPBearer(auto_error=False, description="An API key, or the admin key.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


# The dependencies are coroutines because FastAPI runs plain functions in its thread pool,
# and that hop would cost more than the key check itself.
async def _client(request: Request, _: BearerCredentials) -> Principal:
    return _state(request).keyring.authenticate(request.headers.get("authorization"))


async def _admin(request: Request, _: BearerCredentials) -> Principal:
    return _state(request).keyring.require_admin(request.headers.get("authorization"))


async def _optional_client(request: Request, _: BearerCredentials) -> Principal | None:
    if request.headers.get("authorization") is None:
        return None
    return _state(request).keyring.authenticate(request.headers.get("authorization"))


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


router = APIRouter()


# The key is optional here: FastAPI appends this empty requirement to the Bearer one,
# which in OpenAPI means "Bearer, or no authentication".
@router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses=_errors(401),
    openapi_extra={"security": [{}]},
)
async def get_model(
    request: Request, principal: Annotated[Principal | None, Depends(_optional_client)]
) -> ModelInfo:
    """Describe the hosted model; with a valid key, include that key's limits."""
    state = _state(request)
    model = state.model
    return ModelInfo(
        model_id=state.model_id,
        alphabet=list(model.alphabet),
        alphabet_size=model.alphabet_size,
        horizon=model.horizon,
        oracles=Oracles(samples=True, probabilities=state.settings.probabilities),
        limits=None if principal is None else state.limiter.limits_for(principal),
    )


@router.post(
    "/v1/complete",
    response_model=CompleteResponse,
    responses=_errors(400, 401, 403, 413, 415, 422, 429, 503),
)
async def complete(
    request: Request,
    body: CompleteRequest,
    principal: Annotated[Principal, Depends(_client)],
) -> Response:
    """Sample completions of the prompts, or return their exact next-token laws."""
    state = _state(request)

    # Validate everything, then charge, then sample: a rejected request costs nothing,
    # and a crash after the charge never hands out samples that were not paid for.
    plan = plan_request(state.model, body, state.settings)
    usage = state.limiter.admit(principal, Charge.of_request(body, plan.samples, plan.tokens))
    quota_left = state.limiter.quota_remaining(principal, usage)
    request.state.samples_charged = plan.samples
    request.state.quota_left = quota_left
    rng = state.rng_factory(body.seed)

    args = (state.model, plan, rng, state.model_id, quota_left)
    if plan.tokens < INLINE_TOKEN_LIMIT:
        content = serve_plan(*args)
    else:
        content = await run_in_threadpool(serve_plan, *args)
    return Response(content=content, media_type="application/json")


@router.post(
    "/v1/judge/logprob",
    response_model=JudgeResponse,
    responses=_errors(400, 401, 403, 413, 415, 422),
)
async def judge(
    request: Request, body: JudgeRequest, principal: Annotated[Principal, Depends(_admin)]
) -> JudgeResponse:
    """Return exact log-probabilities of sequences (admin key only)."""
    state = _state(request)
    if len(body.sequences) < INLINE_JUDGE_SEQUENCES:
        log_probs = judge_log_probs(state.model, body, state.settings)
    else:
        log_probs = await run_in_threadpool(judge_log_probs, state.model, body, state.settings)
    return JudgeResponse(model_id=state.model_id, log_probs=log_probs)


@router.get("/v1/usage", response_model=UsageReport, responses=_errors(401, 503))
async def usage(request: Request, principal: Annotated[Principal, Depends(_client)]) -> UsageReport:
    """Report the caller's totals, quota left and limits."""
    limiter = _state(request).limiter
    totals = limiter.usage(principal)
    return UsageReport(
        key_id=principal.key_id,
        requests=totals.requests,
        samples=totals.samples,
        tokens=totals.tokens,
        quota_remaining=limiter.quota_remaining(principal, totals),
        limits=limiter.limits_for(principal),
    )


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    """Report that the server is up and which model it hosts."""
    return Health(model_id=_state(request).model_id)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Return the server's metrics in the Prometheus text format."""
    exported = _state(request).metrics
    return Response(content=exported.render(), media_type=exported.content_type)
