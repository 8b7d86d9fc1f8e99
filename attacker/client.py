"""HTTP access to a lowrank-steal server: the sample oracle for the attacker and the judge.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
h : list of int
    A prompt, ``len(h) < H``.
L : int
    Tokens per completion, ``min(max_tokens, H - len(h))`` for prompt ``h``.

:class:`HttpOracle` implements :class:`~attacker.oracle.Oracle` over ``POST /v1/complete``
and :class:`HttpJudge` wraps the admin-only scoring routes.  Both fetch ``GET /v1/model``
once, split large queries into requests within the server's advertised limits, and send
them concurrently from a private event loop on a daemon thread, so the public methods stay
synchronous and work from any thread.  This is the only attacker module that touches the
network.

Exceptions (all but the zero-probability error derive from ``OracleError``)::

    OracleError
    ├── BudgetExceededError        query would pass the hard budget; nothing was sent
    ├── DeadlineExceededError      the deadline passed before the query completed
    ├── ServerUnreachableError     connect errors or timeouts outlasted the retries
    └── ServerError                the server returned an error status
        ├── AuthenticationError    401 or 403: missing, unknown or non-admin key
        ├── QuotaExhaustedError    429 quota_exhausted: no retry will help
        └── RateLimitedError       429 rate_limited outlasted the retries
    ZeroProbabilityPromptError     422 zero_probability_prompt (a ValueError)

A request is retried after 5xx responses, connect errors and timeouts (up to
``max_retries`` times, with jittered exponential backoff), and after 429 ``rate_limited``
(up to ``max_rate_limit_waits`` times, each after the ``Retry-After`` the server sends).
With a ``deadline``, no request is sent, and no retry is waited for, past it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from attacker.oracle import (
    BudgetExceededError,
    Completions,
    Ledger,
    Oracle,
    OracleError,
)
from shared.model import ZeroProbabilityPromptError, validate_tokens
from shared.protocol import (
    MAX_JUDGE_SEQUENCES,
    MAX_PROMPTS,
    MAX_SAMPLES_PER_PROMPT,
    MAX_SEED,
    CompleteRequest,
    CompleteResponse,
    ErrorBody,
    JudgeRequest,
    JudgeResponse,
    Limits,
    ModelInfo,
    UsageReport,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "DeadlineExceededError",
    "HttpJudge",
    "HttpOracle",
    "PlannedRequest",
    "QuotaExhaustedError",
    "RateLimitedError",
    "RequestLimits",
    "ServerError",
    "ServerUnreachableError",
    "plan_requests",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# Failures of the connection itself, where the same request may succeed later.
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# The server's message for 422 zero_probability_prompt names the prompt's index in the
# request and the position of the first impossible token.
_ZERO_PROMPT_PATTERN = re.compile(r"prompt (\d+) has probability zero.*? position (\d+)")
# Judge request bodies stay near this size, well under the usual request-body caps.
_TARGET_BODY_BYTES = 1 << 20


class ServerUnreachableError(OracleError):
    """Connect errors or timeouts persisted through every retry."""


class DeadlineExceededError(OracleError):
    """The deadline passed, or a retry would wait past it, before the query completed."""


class ServerError(OracleError):
    """The server returned an error status that retrying did not or cannot fix.

    Attributes
    ----------
    status : int
        HTTP status code.
    code : str
        The server's machine-readable error code, or ``"http_<status>"``.
    detail : str
        The server's message.
    """

    def __init__(self, status: int, code: str, detail: str, hint: str = "") -> None:
        self.status = status
        self.code = code
        self.detail = detail
        suffix = f"; {hint}" if hint else ""
        super().__init__(f"server returned {status} {code}: {detail}{suffix}")


class AuthenticationError(ServerError):
    """401 or 403: the key is missing, unknown, or lacks admin rights."""


class QuotaExhaustedError(ServerError):
    """429 quota_exhausted: the key's total quota is spent."""


class RateLimitedError(ServerError):
    """429 rate_limited after every allowed wait, or a ``Retry-After`` over the maximum."""


class _Aborted(Exception):
    """A sibling request failed, so this one was not sent."""


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one ``POST /v1/complete`` request.

    Attributes
    ----------
    max_prompts : int
        Prompts per request.
    max_samples_per_prompt : int
        ``n`` per request.
    max_tokens : int
        Bound on ``prompts x n x max_tokens``.
    max_samples : int or None
        Bound on ``prompts x n``: the samples allowed per rate-limit window, because the
        server rejects a request that can never fit in one window.
    """

    max_prompts: int
    max_samples_per_prompt: int
    max_tokens: int
    max_samples: int | None = None

    @classmethod
    def from_limits(cls, limits: Limits | None) -> RequestLimits:
        """Read the bounds from ``GET /v1/model``; without limits use the protocol's ceilings."""
        if limits is None:
            return cls(MAX_PROMPTS, MAX_SAMPLES_PER_PROMPT, MAX_PROMPTS * MAX_SAMPLES_PER_PROMPT)
        return cls(
            max_prompts=limits.max_prompts_per_request,
            max_samples_per_prompt=limits.max_samples_per_prompt,
            max_tokens=limits.max_tokens_per_request,
            max_samples=limits.samples_per_window,
        )


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a split query: ``n`` samples of the prompts at ``indices``."""

    indices: tuple[int, ...]
    n: int
    max_tokens: int


def plan_requests(
    lengths: Sequence[int], n: int, limits: RequestLimits
) -> list[PlannedRequest]:
    """Split ``n`` samples of each prompt into requests that respect ``limits``.

    Parameters
    ----------
    lengths : sequence of int
        Completion length ``L`` of each prompt, all at least 1.
    n : int
        Samples per prompt.
    limits : RequestLimits

    Returns
    -------
    list of PlannedRequest
        Each prompt index receives exactly ``n`` samples over the requests.

    Raises
    ------
    OracleError
        If even one sample of the longest completion exceeds a limit.
    """
    longest = max(lengths)
    per_request = min(n, limits.max_samples_per_prompt, limits.max_tokens // longest)
    if limits.max_samples is not None:
        per_request = min(per_request, limits.max_samples)
    if per_request < 1:
        raise OracleError(
            f"the server allows {limits.max_tokens} tokens per request but one completion "
            f"has {longest} tokens; request shorter completions (max_tokens)"
        )

    sizes = [per_request] * (n // per_request)
    if n % per_request:
        sizes.append(n % per_request)
    plan: list[PlannedRequest] = []
    for size in sizes:
        plan.extend(_pack_prompts(lengths, size, limits))
    return plan


def _pack_prompts(
    lengths: Sequence[int], size: int, limits: RequestLimits
) -> list[PlannedRequest]:
    """Group consecutive prompts into requests of ``size`` samples each, greedily."""
    plan: list[PlannedRequest] = []
    chunk: list[int] = []
    chunk_longest = 0
    for index, length in enumerate(lengths):
        longest = max(chunk_longest, length)
        count = len(chunk) + 1
        fits = (
            count <= limits.max_prompts
            and count * size * longest <= limits.max_tokens
            and (limits.max_samples is None or count * size <= limits.max_samples)
        )
        if chunk and not fits:
            plan.append(PlannedRequest(tuple(chunk), size, chunk_longest))
            chunk, longest = [], length
        chunk.append(index)
        chunk_longest = longest
    plan.append(PlannedRequest(tuple(chunk), size, chunk_longest))
    return plan


def _merge(parts: list[Completions]) -> Completions:
    """Combine the aggregated completions of one prompt from several requests."""
    if len(parts) == 1:
        return parts[0]
    futures = np.concatenate([part.futures for part in parts])
    counts = np.concatenate([part.counts for part in parts])
    distinct, inverse = np.unique(futures, axis=0, return_inverse=True)
    totals = np.bincount(inverse.reshape(-1), weights=counts, minlength=distinct.shape[0])
    return Completions(distinct.astype(np.int64), totals.astype(np.int64))


def _parse_retry_after(value: str | None) -> float | None:
    """Return the ``Retry-After`` delay in seconds (RFC 9110, section 10.2.3)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        # NOTE: the HTTP-date form needs a wall clock, so it falls back to plain backoff;
        # servers of this protocol send delay-seconds.
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class _EventLoopThread:
    """An asyncio event loop running on a daemon thread, driven from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="lowrank-http", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for it; Ctrl-C cancels it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Cancel the tasks still running (after Ctrl-C, say), then stop the loop."""
        try:
            asyncio.run_coroutine_threadsafe(_cancel_pending_tasks(), self.loop).result(
                timeout=_DRAIN_SECONDS
            )
        except concurrent.futures.TimeoutError:
            logger.warning("requests still running after %g s; closing anyway", _DRAIN_SECONDS)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


# Time the loop gets to wind down cancelled requests before it is stopped.
_DRAIN_SECONDS = 5.0


async def _cancel_pending_tasks() -> None:
    """Cancel every other task on the running loop and wait for them to finish."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Connection:
    """A pooled async HTTP client with bounded concurrency, retries and error mapping."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        max_concurrency: int,
        timeout: float,
        max_retries: int,
        max_rate_limit_waits: int,
        backoff_base: float,
        backoff_max: float,
        max_retry_after: float,
        rng: np.random.Generator | None,
        sleep: Sleep,
        clock: Clock,
        deadline: float | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"base URL {base_url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000"
            )
        if max_concurrency < 1 or max_retries < 0 or max_rate_limit_waits < 0 or timeout <= 0:
            raise ValueError(
                f"max_concurrency={max_concurrency}, max_retries={max_retries}, "
                f"max_rate_limit_waits={max_rate_limit_waits}, timeout={timeout}: use "
                "max_concurrency >= 1, max_retries >= 0, max_rate_limit_waits >= 0, timeout > 0"
            )
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_rate_limit_waits = max_rate_limit_waits
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.deadline = deadline
        self.retries = 0
        self._rng = rng if rng is not None else np.random.default_rng()
        self._sleep = sleep
        self._clock = clock
        self._closed = False
        self._thread = _EventLoopThread()
        self._client, self._semaphore = self._thread.run(
            self._open(key, max_concurrency, timeout)
        )

    async def _open(
        self, key: str, max_concurrency: int, timeout: float
    ) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Created on the loop that will use them.
        pool = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout),
            limits=pool,
        )
        return client, asyncio.Semaphore(max_concurrency)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._thread.run(coroutine)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.run(self._client.aclose())
        self._thread.close()

    async def request(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        abort: asyncio.Event | None = None,
        label: str = "",
    ) -> bytes:
        """Send one request with retries and return the body of its success response.

        Raises
        ------
        ServerError, ServerUnreachableError, ZeroProbabilityPromptError
        _Aborted
            If ``abort`` was set before the request got a connection slot.
        """
        payload = None if body is None else body.model_dump(mode="json", exclude_none=True)
        failures = waits = 0
        while True:
            try:
                response = await self._send_once(method, path, payload, abort, label)
            except _TRANSIENT_ERRORS as exc:
                reason = f"{type(exc).__name__} ({exc})"
                if isinstance(exc, httpx.ReadTimeout) and method == "POST":
                    logger.warning(
                        "%s %s %stimed out after it was sent; the server may have charged it "
                        "although the ledger does not count it", method, path, label,
                    )
                if self._seconds_left() == 0.0:
                    raise DeadlineExceededError(
                        f"{method} {self.base_url}{path} failed at the deadline: {reason}"
                    ) from exc
                if failures == self.max_retries:
                    raise ServerUnreachableError(
                        f"{method} {self.base_url}{path} failed after {failures + 1} attempts: "
                        f"{reason}; check the URL and that the server is running"
                    ) from exc
                delay = self._backoff_delay(failures)
                failures += 1
            except httpx.HTTPError as exc:
                raise OracleError(f"{method} {self.base_url}{path} failed: {exc}") from exc
            else:
                if response.is_success:
                    return response.content
                error = _error_from_response(response, payload)
                reason = f"{response.status_code} {getattr(error, 'code', '')}"
                if isinstance(error, RateLimitedError) and waits < self.max_rate_limit_waits:
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                    delay = self._rate_limit_delay(retry_after, waits)
                    waits += 1
                elif response.status_code >= 500 and failures < self.max_retries:
                    # A 503 may carry the time the server expects to recover, so never retry sooner.
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                    delay = max(self._backoff_delay(failures), min(retry_after or 0.0, self.max_retry_after))
                    failures += 1
                else:
                    raise error
            self._check_retry_fits(method, path, reason, delay)
            self.retries += 1
            logger.info(
                "%s %s: %s; retrying in %.2f s (failure %d of %d allowed, rate-limit wait %d)",
                method, path, reason, delay, failures, self.max_retries, waits,
            )
            await self._sleep(delay)

    async def _send_once(
        self, method: str, path: str, payload: Any, abort: asyncio.Event | None, label: str
    ) -> httpx.Response:
        async with self._semaphore:
            if abort is not None and abort.is_set():
                raise _Aborted
            timeout = self._request_timeout(method, path)
            started = self._clock()
            response = await self._client.request(method, path, json=payload, timeout=timeout)
        logger.debug(
            "%s %s %s-> %d in %.3f s",
            method, path, label, response.status_code, self._clock() - started,
        )
        return response

    def _seconds_left(self) -> float | None:
        """Return the seconds until the deadline (0 once passed), or None without one."""
        if self.deadline is None:
            return None
        return max(self.deadline - self._clock(), 0.0)

    def _request_timeout(self, method: str, path: str) -> Any:
        """Return the timeout of the next attempt: the client's, cut to the deadline."""
        left = self._seconds_left()
        if left is None:
            return httpx.USE_CLIENT_DEFAULT
        if left == 0.0:
            raise DeadlineExceededError(
                f"{method} {self.base_url}{path} not sent: the deadline has passed"
            )
        if left >= self.timeout:
            return httpx.USE_CLIENT_DEFAULT
        return httpx.Timeout(left)

    def _check_retry_fits(self, method: str, path: str, reason: str, delay: float) -> None:
        """Raise :class:`DeadlineExceededError` if waiting ``delay`` seconds passes the deadline."""
        left = self._seconds_left()
        if left is not None and delay >= left:
            raise DeadlineExceededError(
                f"{method} {self.base_url}{path} failed ({reason}) and its retry in "
                f"{delay:.2f} s would start after the deadline, {left:.2f} s from now"
            )

    def _backoff_delay(self, failures: int) -> float:
        """Return the wait after ``failures`` earlier failures: uniform in ``[b/2, b]``."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**failures)
        return ceiling * (0.5 + 0.5 * float(self._rng.random()))

    def _rate_limit_delay(self, retry_after: float | None, waits: int) -> float:
        """Return the wait after a 429: ``Retry-After`` plus jitter, else exponential backoff."""
        if retry_after is None:
            return self._backoff_delay(waits)
        if retry_after > self.max_retry_after:
            raise RateLimitedError(
                429,
                "rate_limited",
                f"server asks to wait {retry_after:g} s",
                f"more than max_retry_after={self.max_retry_after:g} s; retry later",
            )
        # The jitter spreads out concurrent requests that received the same Retry-After.
        return retry_after + self.backoff_base * float(self._rng.random())

    async def gather(self, jobs: Sequence[Callable[[asyncio.Event], Awaitable[T]]]) -> list[T]:
        """Run ``jobs`` concurrently; after a failure, send no new request and re-raise it.

        Requests already in flight finish, so every request the server charged is recorded.
        """
        abort = asyncio.Event()

        async def guarded(job: Callable[[asyncio.Event], Awaitable[T]]) -> T:
            try:
                return await job(abort)
            except BaseException:
                abort.set()
                raise

        outcomes = await asyncio.gather(*(guarded(job) for job in jobs), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _Aborted):
                raise outcome
        return outcomes  # type: ignore[return-value]

    async def fetch_model_info(self) -> ModelInfo:
        return _parse(ModelInfo, await self.request("GET", "/v1/model", None), "/v1/model")

    async def fetch_usage(self) -> UsageReport:
        return _parse(UsageReport, await self.request("GET", "/v1/usage", None), "/v1/usage")


def _error_from_response(response: httpx.Response, payload: Any) -> Exception:
    """Translate an error response into the exception a caller can act on."""
    status = response.status_code
    try:
        detail = ErrorBody.model_validate_json(response.content).error
        code, message = detail.code, detail.message
        # Error bodies from this project's server already include the fix, so no hint is added.
        hinted = True
    except ValidationError:
        code, message = f"http_{status}", response.text[:500] or response.reason_phrase
        hinted = False

    if code == "zero_probability_prompt":
        return _zero_probability_error(message, payload)
    if status in (401, 403):
        hint = "check the key" if status == 401 else "this route needs the admin key"
        return AuthenticationError(status, code, message, "" if hinted else hint)
    if status == 429 and code == "quota_exhausted":
        return QuotaExhaustedError(status, code, message, "" if hinted else "the key's quota is spent")
    if status == 429:
        return RateLimitedError(status, code, message, "retries exhausted; lower the request rate")
    return ServerError(status, code, message)


def _zero_probability_error(message: str, payload: Any) -> Exception:
    """Rebuild the local exception from the prompt index and position in the message.

    A message in another form gives a :class:`ServerError` with code
    ``zero_probability_prompt``.
    """
    prompts = payload.get("prompts", []) if isinstance(payload, dict) else []
    match = _ZERO_PROMPT_PATTERN.search(message)
    if match is None or int(match.group(1)) >= len(prompts):
        return ServerError(422, "zero_probability_prompt", message)
    prompt = prompts[int(match.group(1))]
    position = int(match.group(2))
    if not 0 <= position < len(prompt):
        return ServerError(422, "zero_probability_prompt", message)
    return ZeroProbabilityPromptError(prompt, position)


def _parse(schema: type[M], content: bytes, route: str) -> M:
    try:
        return schema.model_validate_json(content)
    except ValidationError as exc:
        raise OracleError(f"malformed response from {route}: {exc}") from exc


class _HttpClientBase:
    """Connection set-up shared by the oracle and the judge."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_rate_limit_waits: int = 100,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        rng: np.random.Generator | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        deadline: float | None = None,
    ) -> None:
        self._connection = _Connection(
            base_url,
            key,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            max_rate_limit_waits=max_rate_limit_waits,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            rng=rng,
            sleep=sleep,
            clock=clock,
            deadline=deadline,
        )
        try:
            self.model_info = self._connection.run(self._connection.fetch_model_info())
        except BaseException:
            self._connection.close()
            raise
        self.alphabet: tuple[str, ...] = tuple(self.model_info.alphabet)
        self.horizon: int = self.model_info.horizon
        self.request_limits = RequestLimits.from_limits(self.model_info.limits)

    def quota_remaining(self) -> int | None:
        """Return the samples left on the key's quota (``GET /v1/usage``), or None if unlimited."""
        return self._connection.run(self._connection.fetch_usage()).quota_remaining

    @property
    def base_url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return self._connection.base_url

    @property
    def retries(self) -> int:
        """Retries made so far, over all requests."""
        return self._connection.retries

    @property
    def alphabet_size(self) -> int:
        """``A``."""
        return len(self.alphabet)

    def close(self) -> None:
        """Close the connections and stop the event-loop thread."""
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _complete_request(
        self, request: CompleteRequest, abort: asyncio.Event
    ) -> CompleteResponse:
        if request.next_token_probs:
            label = f"({len(request.prompts)} next-token laws) "
        else:
            label = f"({len(request.prompts)} prompts x n={request.n}, max_tokens={request.max_tokens}) "
        data = await self._connection.request("POST", "/v1/complete", request, abort, label)
        response = _parse(CompleteResponse, data, "/v1/complete")
        if len(response.choices) != len(request.prompts):
            raise OracleError(
                f"server returned {len(response.choices)} choices for "
                f"{len(request.prompts)} prompts"
            )
        return response


class HttpOracle(_HttpClientBase, Oracle):
    """The sample oracle (and probability oracle, where enabled) of a remote server.

    Parameters
    ----------
    base_url : str
        Server root, e.g. ``http://127.0.0.1:8000``.
    api_key : str
        Key sent as ``Authorization: Bearer <key>``; never logged.
    budget : int, optional
        Hard cap on samples.  A query that would pass it raises
        :class:`BudgetExceededError` before any request is sent.
    max_concurrency : int, default 8
        Requests in flight at once (and pooled connections).
    timeout : float, default 60.0
        Seconds allowed for each of connect, read, write and waiting for a pooled
        connection, per request.
    max_retries : int, default 5
        Retries of one request after 5xx responses, connect errors and timeouts.
    max_rate_limit_waits : int, default 100
        Retries of one request after 429 ``rate_limited``, each after the server's
        ``Retry-After``.
    backoff_base, backoff_max : float, default 0.5 and 30.0
        Exponential backoff before retry ``k`` is drawn from ``[b/2, b]`` with
        ``b = min(backoff_max, backoff_base * 2**k)`` seconds.
    max_retry_after : float, default 300.0
        A longer ``Retry-After`` raises :class:`RateLimitedError` instead of waiting.
    sampling_seed : int, optional
        When given, request ``j`` of call ``k`` (see :attr:`calls`) carries a seed
        derived from ``(sampling_seed, k, j)``, so the samples are reproducible on a
        server that honours seeds.
    rng : numpy.random.Generator, optional
        Randomness for the backoff jitter.
    sleep : async callable, default asyncio.sleep
        Waits the given seconds between retries.
    clock : callable, default time.monotonic
        Seconds, for the request durations in the log and the deadline.
    deadline : float, optional
        Time on ``clock`` after which no request is sent and no retry is waited for;
        a query cut short by it raises :class:`DeadlineExceededError`.  The timeout of
        each attempt is shortened to end at the deadline.

    Attributes
    ----------
    calls : int
        Calls of :meth:`complete` and :meth:`next_token_probs` that got past the budget
        check so far; the next call has index ``calls``.  A wrapper that returns some
        responses from elsewhere (a query log) sets it, so later calls keep their seeds.

    Raises
    ------
    ValueError
        If the URL or a setting is invalid.
    ServerError, ServerUnreachableError
        If ``GET /v1/model`` fails.

    Notes
    -----
    Requests use ``aggregate=true``, so each request returns distinct completions with
    their counts, and the ledger is charged from the ``usage`` block of each response.
    A request that timed out may still have been charged by the server, so after timeouts
    the server's count can exceed the ledger's.  Seeds depend on the call index, so
    concurrent calls from several threads get reproducible samples only if they start in
    the same order.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        budget: int | None = None,
        *,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_rate_limit_waits: int = 100,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        sampling_seed: int | None = None,
        rng: np.random.Generator | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        deadline: float | None = None,
    ) -> None:
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be a positive number of samples, got {budget}")
        if sampling_seed is not None and not 0 <= sampling_seed <= MAX_SEED:
            raise ValueError(f"sampling_seed={sampling_seed}; use an integer in 0..{MAX_SEED}")
        super().__init__(
            base_url,
            api_key,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            max_rate_limit_waits=max_rate_limit_waits,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            rng=rng,
            sleep=sleep,
            clock=clock,
            deadline=deadline,
        )
        self.ledger = Ledger(budget=budget)
        self.supports_probabilities = self.model_info.oracles.probabilities
        self.sampling_seed = sampling_seed
        self.calls = 0
        self._reserved = 0
        self._reserve_lock = threading.Lock()

    def complete(
        self, prompts: Sequence[Sequence[int]], n: int, max_tokens: int
    ) -> list[Completions]:
        if not self.model_info.oracles.samples:
            raise OracleError("this server sells no samples; use next_token_probs")
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n={n} and max_tokens={max_tokens} must both be at least 1")
        if not prompts:
            return []
        checked = [self._check_prompt(prompt, i) for i, prompt in enumerate(prompts)]
        lengths = [min(max_tokens, self.horizon - len(prompt)) for prompt in checked]
        plan = plan_requests(lengths, n, self.request_limits)
        with self._reservation(n * len(checked)) as call:
            parts = self._connection.run(self._complete_all(checked, plan, call))
        return [_merge(part) for part in parts]

    def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        if not self.supports_probabilities:
            return super().next_token_probs(prompts)
        checked = [self._check_prompt(prompt, i) for i, prompt in enumerate(prompts)]
        if not checked:
            return np.empty((0, self.alphabet_size))
        plan = plan_requests([1] * len(checked), 1, self.request_limits)
        with self._reservation(len(checked)):
            rows = self._connection.run(self._laws_all(checked, plan))
        return np.asarray(rows, dtype=np.float64).reshape(len(checked), self.alphabet_size)

    def _check_prompt(self, prompt: Sequence[int], index: int) -> list[int]:
        tokens = validate_tokens(prompt, self.alphabet_size, self.horizon - 1, f"prompt {index}")
        return [int(token) for token in tokens]

    @contextlib.contextmanager
    def _reservation(self, samples: int) -> Iterator[int]:
        """Hold ``samples`` of the budget for one call and yield the call's index.

        Raises :class:`BudgetExceededError` if the samples do not fit.
        """
        with self._reserve_lock:
            # Calls running on other threads hold reservations that are not charged yet.
            self.ledger.reserve(self._reserved + samples)
            self._reserved += samples
            call = self.calls
            self.calls += 1
        try:
            yield call
        finally:
            with self._reserve_lock:
                self._reserved -= samples

    def _request_seed(self, call: int, request: int) -> int | None:
        """Return the seed of request ``request`` of call ``call``, or None without a seed."""
        if self.sampling_seed is None:
            return None
        return int(np.random.default_rng([self.sampling_seed, call, request]).integers(MAX_SEED))

    async def _complete_all(
        self, prompts: list[list[int]], plan: list[PlannedRequest], call: int
    ) -> list[list[Completions]]:
        parts: list[list[Completions]] = [[] for _ in prompts]

        def job(number: int, planned: PlannedRequest) -> Callable[[asyncio.Event], Awaitable[None]]:
            request = CompleteRequest(
                prompts=[prompts[i] for i in planned.indices],
                n=planned.n,
                max_tokens=planned.max_tokens,
                seed=self._request_seed(call, number),
                aggregate=True,
            )

            async def send(abort: asyncio.Event) -> None:
                response = await self._complete_request(request, abort)
                self._charge(response, request.n * len(request.prompts))
                for index, choice in zip(planned.indices, response.choices):
                    parts[index].append(_completions_of(choice, planned.n))

            return send

        await self._connection.gather([job(number, planned) for number, planned in enumerate(plan)])
        return parts

    async def _laws_all(
        self, prompts: list[list[int]], plan: list[PlannedRequest]
    ) -> list[list[float]]:
        rows: list[list[float]] = [[] for _ in prompts]

        def job(planned: PlannedRequest) -> Callable[[asyncio.Event], Awaitable[None]]:
            request = CompleteRequest(
                prompts=[prompts[i] for i in planned.indices], next_token_probs=True
            )

            async def send(abort: asyncio.Event) -> None:
                response = await self._complete_request(request, abort)
                self._charge(response, len(request.prompts))
                for index, choice in zip(planned.indices, response.choices):
                    if choice.next_token_probs is None:
                        raise OracleError("server returned no next_token_probs for a prompt")
                    rows[index] = choice.next_token_probs

            return send

        await self._connection.gather([job(planned) for planned in plan])
        return rows

    def _charge(self, response: CompleteResponse, expected: int) -> None:
        usage = response.usage
        if usage.samples != expected:
            logger.warning(
                "server charged %d samples for a request of %d", usage.samples, expected
            )
        self.ledger.charge(usage.samples, usage.tokens)


def _completions_of(choice: Any, n: int) -> Completions:
    """Convert one aggregated choice to :class:`Completions`, checking its sample count."""
    if choice.completions is None:
        raise OracleError("server returned a choice without completions")
    counts = np.asarray(
        choice.counts if choice.counts is not None else [1] * len(choice.completions),
        dtype=np.int64,
    )
    futures = np.asarray(choice.completions, dtype=np.int64).reshape(len(counts), -1)
    if int(counts.sum()) != n:
        raise OracleError(f"server returned {int(counts.sum())} samples for a request of {n}")
    return Completions(futures, counts)


class HttpJudge(_HttpClientBase):
    """Admin access to a server for scoring: exact log-probabilities and free reference samples.

    Parameters
    ----------
    base_url : str
        Server root.
    admin_key : str
        The server's admin key; its requests are not charged.
    judge_batch_size : int, default 10_000
        Maximum sequences per ``POST /v1/judge/logprob`` request (fewer for long sequences,
        to keep each body near 1 MiB).  Servers do not advertise their own maximum, so
        lower this if the server rejects a batch as too large.
    **options
        Connection settings as for :class:`HttpOracle`.
    """

    def __init__(
        self, base_url: str, admin_key: str, *, judge_batch_size: int = 10_000, **options: Any
    ) -> None:
        if not 1 <= judge_batch_size <= MAX_JUDGE_SEQUENCES:
            raise ValueError(
                f"judge_batch_size={judge_batch_size}; use 1..{MAX_JUDGE_SEQUENCES}"
            )
        super().__init__(base_url, admin_key, **options)
        self.judge_batch_size = judge_batch_size

    def judge_log_probs(self, sequences: NDArray[np.integer]) -> NDArray[np.float64]:
        """Return the server's exact ``log P(x)`` of each row, ``-inf`` where ``P(x) = 0``.

        Parameters
        ----------
        sequences : ndarray of int, shape (N, T)
            Full sequences (``T = H``) or prefixes (``T < H``).

        Returns
        -------
        ndarray of float64, shape (N,)
            Log-probabilities in nats.
        """
        array = np.asarray(sequences, dtype=np.int64)
        if array.ndim != 2 or array.shape[1] > self.horizon:
            raise ValueError(
                f"sequences must have shape (N, T) with T <= H={self.horizon}, got {array.shape}"
            )
        bytes_per_sequence = array.shape[1] * (len(str(self.alphabet_size - 1)) + 1) + 2
        size = max(1, min(self.judge_batch_size, _TARGET_BODY_BYTES // bytes_per_sequence))
        batches = [array[start : start + size] for start in range(0, array.shape[0], size)]
        if not batches:
            return np.empty(0)
        values = self._connection.run(self._judge_all(batches))
        return np.concatenate(values)

    async def _judge_all(self, batches: list[NDArray[np.int64]]) -> list[NDArray[np.float64]]:
        def job(batch: NDArray[np.int64]) -> Callable[[asyncio.Event], Awaitable[NDArray[np.float64]]]:
            request = JudgeRequest(sequences=batch.tolist())

            async def send(abort: asyncio.Event) -> NDArray[np.float64]:
                data = await self._connection.request(
                    "POST", "/v1/judge/logprob", request, abort, f"({batch.shape[0]} sequences) "
                )
                log_probs = _parse(JudgeResponse, data, "/v1/judge/logprob").log_probs
                if len(log_probs) != batch.shape[0]:
                    raise OracleError(
                        f"judge returned {len(log_probs)} values for {batch.shape[0]} sequences"
                    )
                return np.array([-np.inf if v is None else v for v in log_probs], dtype=np.float64)

            return send

        return await self._connection.gather([job(batch) for batch in batches])

    def sample_reference(self, n: int, seed: int | None = None) -> Completions:
        """Draw ``n`` full sequences ``x ~ P`` from the empty prompt, free of charge.

        Parameters
        ----------
        n : int
            Number of sequences.
        seed : int, optional
            Makes the draw reproducible; each request gets a seed derived from it.

        Returns
        -------
        Completions
            Distinct sequences, shape (m, H), with counts summing to ``n``.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        plan = plan_requests([self.horizon], n, self.request_limits)
        seeds = np.random.default_rng(seed) if seed is not None else None
        requests = [
            CompleteRequest(
                prompts=[[]],
                n=planned.n,
                max_tokens=self.horizon,
                seed=None if seeds is None else int(seeds.integers(MAX_SEED)),
                aggregate=True,
            )
            for planned in plan
        ]
        parts = self._connection.run(self._sample_all(requests))
        return _merge(parts)

    async def _sample_all(self, requests: list[CompleteRequest]) -> list[Completions]:
        def job(request: CompleteRequest) -> Callable[[asyncio.Event], Awaitable[Completions]]:
            async def send(abort: asyncio.Event) -> Completions:
                response = await self._complete_request(request, abort)
                return _completions_of(response.choices[0], request.n)

            return send

        return await self._connection.gather([job(request) for request in requests])
