"""The FastAPI application factory of the model server.

:func:`create_app` wires the hosted model, the key ring, the usage ledger, the rate
limiter, the error handlers and the middleware.  The secret model is loaded here, once,
unless a test injects one.  Every response is JSON, errors are
``{"error": {"code": ..., "message": ...}}``, and every response carries the
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` headers of the
caller's request window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI

from server.auth import KeyRing
from server.errors import install_error_handlers
from server.ledger import MemoryLedger
from server.limiter import Limiter
from server.middleware import AccessMiddleware, BodyLimitMiddleware
from server.routes import RngFactory, ServerState, router
from server.settings import Settings
from shared.model import SequenceModel
from shared.protocol import PROTOCOL_VERSION

__all__ = ["create_app", "load_hosted_model"]

logger = logging.getLogger(__name__)

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


def create_app(
    settings: Settings,
    model: SequenceModel | None = None,
    clock: Callable[[], float] | None = None,
    rng_factory: RngFactory | None = None,
) -> FastAPI:
    """Build the server application.

    Parameters
    ----------
    settings : Settings
        Keys, limits and the model to load.
    model : SequenceModel, optional
        The model to host; default: loaded from ``settings.model``.
    clock : callable returning float, optional
        Seconds for the rate-limit windows; default ``time.monotonic``.
    rng_factory : callable, optional
        Maps a request's ``seed`` (or None) to a ``numpy.random.Generator``; default
        ``numpy.random.default_rng``, which draws fresh entropy for None.

    Returns
    -------
    FastAPI
    """
    if model is None:
        model = load_hosted_model(settings.model)
    model_id = str(getattr(model, "model_id", None) or settings.model)

    keyring = KeyRing(settings.api_keys, settings.admin_key)
    limiter = Limiter(settings, MemoryLedger(), clock or time.monotonic)
    app = FastAPI(
        title="lowrank-steal model server",
        version=f"{PROTOCOL_VERSION}",
        description=_DESCRIPTION,
    )
    app.state.server = ServerState(
        settings=settings,
        model=model,
        model_id=model_id,
        keyring=keyring,
        limiter=limiter,
        rng_factory=rng_factory or np.random.default_rng,
    )

    install_error_handlers(app)
    app.include_router(router)
    # The last middleware added is the outermost, so the access layer wraps every response.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, keyring=keyring, limiter=limiter)
    logger.info(
        "serving model %s (A=%d, H=%d) to %d client keys%s; probabilities %s",
        model_id,
        model.alphabet_size,
        model.horizon,
        len(settings.api_keys),
        " and the admin key" if settings.admin_key else "",
        "on" if settings.probabilities else "off",
    )
    return app
