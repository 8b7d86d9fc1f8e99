"""The FastAPI application factory of the model server.

:func:`create_app` wires the hosted model, the key ring, the usage ledger, the rate
limiter, the metrics, the error handlers and the middleware.  The secret model is loaded
here, once, unless a test injects one.  Every response except ``/metrics`` is JSON,
errors are ``{"error": {"code": ..., "message": ...}}``, and every response carries the
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` headers of the
caller's request window.

:func:`app_from_env` is the factory that each uvicorn worker of a multi-worker server
calls (``uvicorn.run("server.app:app_from_env", factory=True, workers=N)``): it reads the
settings from ``LOWRANK_SERVER_SETTINGS``, which ``lowrank-server`` sets.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI

from server.auth import KeyRing
from server.errors import install_error_handlers
from server.ledger import Ledger
from server.limiter import Limiter
from server.metrics import Metrics
from server.middleware import AccessMiddleware, BodyLimitMiddleware
from server.routes import RngFactory, ServerState, router
from server.settings import Settings
from server.window_storage import window_storage
from shared.model import SequenceModel
from shared.protocol import PROTOCOL_VERSION

__all__ = ["LOG_FORMAT", "app_from_env", "configure_logging", "create_app", "load_hosted_model"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"

_DESCRIPTION = """\
Sells conditional queries to a secret sequence model (a hidden Markov model or low-rank
operator model).  Send `Authorization: Bearer <key>`.  Errors are JSON
`{"error": {"code", "message"}}`.  Every response carries `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds) for the caller's request window;
429 `rate_limited` adds `Retry-After`, and 429 `quota_exhausted` means no retry will help.
"""


def load_hosted_model(name_or_path: str) -> SequenceModel:
    """Load the model to host from a preset name, a preset with parameters, or a file path.

    Raises
    ------
    ValueError
        For an unknown name or an invalid model file; the message lists the presets.
    """
    from shared.presets import load_model  # imported here so tests need no presets

    return load_model(name_or_path)


def public_model_id(model_id: str) -> str:
    """Return ``model_id`` without preset parameters, which may include a secret seed."""
    return model_id.split(":", 1)[0]


def create_app(
    settings: Settings,
    model: SequenceModel | None = None,
    clock: Callable[[], float] | None = None,
    rng_factory: RngFactory | None = None,
    ledger: Ledger | None = None,
) -> FastAPI:
    """Build the server application.

    Parameters
    ----------
    settings : Settings
        Keys, limits, storage and the model to load.
    model : SequenceModel, optional
        The model to host; default: loaded from ``settings.model``.
    clock : callable returning float, optional
        Seconds for the rate-limit windows; default ``time.monotonic``, or ``time.time``
        with Redis, whose windows are kept in wall-clock time.
    rng_factory : callable, optional
        Maps a request's ``seed`` (or None) to a ``numpy.random.Generator``; default
        ``numpy.random.default_rng``, which draws fresh entropy for None.
    ledger : Ledger, optional
        Usage ledger; default opened at ``settings.ledger`` and closed when the app
        shuts down.

    Returns
    -------
    FastAPI

    Raises
    ------
    KeysFileError
        If the keys file is invalid.
    LedgerError
        If the ledger cannot be opened.
    """
    if model is None:
        model = load_hosted_model(settings.model)
    model_id = settings.model_id or public_model_id(
        str(getattr(model, "model_id", None) or settings.model)
    )
    if clock is None:
        clock = time.monotonic if settings.redis_url is None else time.time

    keyring = KeyRing.from_settings(settings)
    owns_ledger = ledger is None
    ledger = ledger or Ledger(settings.ledger, synchronous=settings.ledger_sync)
    limiter = Limiter(settings, ledger, clock, window_storage(settings, clock))
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_ledger:
            ledger.close()

    app = FastAPI(
        title="lowrank-steal model server",
        version=f"{PROTOCOL_VERSION}",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.server = ServerState(
        settings=settings,
        model=model,
        model_id=model_id,
        keyring=keyring,
        limiter=limiter,
        metrics=metrics,
        rng_factory=rng_factory or np.random.default_rng,
    )

    install_error_handlers(app)
    app.include_router(router)
    # The last middleware added is the outermost, so the access layer wraps every response.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, keyring=keyring, limiter=limiter, metrics=metrics)
    logger.info(
        "serving model %s (A=%d, H=%d) to %d keys; probabilities %s; windows in %s; "
        "ledger %s; metrics %s",
        model_id,
        model.alphabet_size,
        model.horizon,
        keyring.size,
        "on" if settings.probabilities else "off",
        "Redis" if settings.redis_url else "process memory",
        ledger.path,
        "multiprocess" if metrics.multiprocess else "single-process",
    )
    return app


def configure_logging(settings: Settings) -> None:
    """Send log records of ``settings.log_level`` and above to standard error."""
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, stream=sys.stderr)


def app_from_env() -> FastAPI:
    """Build the app of one uvicorn worker from the settings in ``LOWRANK_SERVER_SETTINGS``.

    Raises
    ------
    RuntimeError
        If the variable is not set.
    """
    settings = Settings.from_worker_env()
    configure_logging(settings)
    return create_app(settings)
