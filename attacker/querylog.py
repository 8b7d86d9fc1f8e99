"""An append-only log of an attack's oracle calls, and its replay to resume an interrupted attack.

:class:`LoggedOracle` wraps any :class:`~attacker.oracle.Oracle`.  It appends every completed
call of ``complete`` or ``next_token_probs`` to a JSON-lines file, one line per call with the
request, the response and its cost, and flushes and fsyncs each line before returning the
response.  A process killed at any moment therefore leaves every returned response on disk,
plus at most one torn last line, which the next open drops.

With ``resume=True`` the wrapper first reads the log.  While the calls it receives equal the
logged calls, in order, it returns the logged responses and charges their logged cost to its
ledger, and the inner oracle is not called.  At the end of the log, or at the first call that
differs, it continues with the inner oracle and appends.  A learner with a seeded ``rng`` that
gets the same responses makes the same calls, so a resumed attack takes the path of an
uninterrupted one and pays for each logged call once.

File format, version 1 (one JSON object per line)::

    {"format": "lowrank-steal/query-log", "version": 1, "url": ..., "model_id": ...,
     "alphabet": [...], "horizon": H, "budget": ..., "settings": {...}, "seed": ...,
     "created": ...}
    {"method": "complete", "prompts": [[...], ...], "n": ..., "max_tokens": ...,
     "completions": [{"futures": [[...], ...], "counts": [...]}, ...],
     "samples": ..., "tokens": ..., "requests": ..., "phase": ..., "time": ..., "seconds": ...}
    {"method": "next_token_probs", "prompts": [...], "laws": [[...], ...], ...}

``time`` and ``created`` are Unix times in seconds, ``seconds`` is how long the call took.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attacker.oracle import Completions, Ledger, Oracle

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "LOG_FORMAT",
    "LOG_VERSION",
    "CallTally",
    "LoggedOracle",
    "QueryLogError",
    "QueryLogHeader",
    "QueryRecord",
]

logger = logging.getLogger(__name__)

LOG_FORMAT: Final = "lowrank-steal/query-log"
LOG_VERSION: Final = 1

T = TypeVar("T")


class QueryLogError(ValueError):
    """The query log cannot be used: it exists without resume, is damaged, or belongs to another attack."""


class QueryLogHeader(BaseModel):
    """First line of a query log: what the logged calls are valid for.

    A resumed run must match every field except ``created``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["lowrank-steal/query-log"] = LOG_FORMAT
    version: Literal[1] = LOG_VERSION
    url: str = Field(description="Base URL of the target, or another name of it.")
    model_id: str
    alphabet: tuple[str, ...]
    horizon: int = Field(ge=1)
    budget: int | None = Field(description="Hard cap on samples of the attack.")
    settings: dict[str, Any] = Field(description="Learner settings, as JSON.")
    seed: int | None = Field(description="Seed of the learner and of the sampling.")
    created: float = Field(default=0.0, description="Unix time the log was started.")

    def differences(self, other: QueryLogHeader) -> list[str]:
        """Return ``"field: logged X, now Y"`` for each field (but ``created``) that differs."""
        changed = []
        for name in ("url", "model_id", "alphabet", "horizon", "budget", "settings", "seed"):
            logged, now = getattr(self, name), getattr(other, name)
            if logged != now:
                changed.append(f"{name}: logged {logged!r}, now {now!r}")
        return changed


class LoggedCompletions(BaseModel):
    """Distinct completions of one prompt and their counts, as in :class:`Completions`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    futures: list[list[int]]
    counts: list[int]


class QueryRecord(BaseModel):
    """One completed oracle call: request, response and cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["complete", "next_token_probs"]
    prompts: list[list[int]]
    n: int | None = None
    max_tokens: int | None = None
    completions: list[LoggedCompletions] | None = None
    laws: list[list[float]] | None = None
    samples: int = Field(ge=0)
    tokens: int = Field(ge=0)
    requests: int = Field(ge=0)
    phase: str
    time: float
    seconds: float

    def matches(
        self, method: str, prompts: list[list[int]], n: int | None, max_tokens: int | None
    ) -> bool:
        """Return whether this record is the response to the call described by the arguments."""
        return (
            self.method == method
            and self.n == n
            and self.max_tokens == max_tokens
            and self.prompts == prompts
        )


@dataclass
class CallTally:
    """Calls and what they cost, for the replayed or the live part of a run."""

    calls: int = 0
    samples: int = 0
    tokens: int = 0

    def add(self, samples: int, tokens: int) -> None:
        """Count one call that cost ``samples`` samples and ``tokens`` tokens."""
        self.calls += 1
        self.samples += samples
        self.tokens += tokens

    def to_dict(self) -> dict[str, int]:
        """Return a JSON-ready copy."""
        return {"calls": self.calls, "samples": self.samples, "tokens": self.tokens}


@runtime_checkable
class _CallIndexed(Protocol):
    """An oracle whose sampling seeds depend on the index of the call (the HTTP oracle)."""

    calls: int


@dataclass(frozen=True)
class _Cost:
    samples: int
    tokens: int
    requests: int
    phase: str
    time: float
    seconds: float


class LoggedOracle(Oracle):
    """An oracle that logs every call of ``inner`` to ``path`` and can replay the log.

    Parameters
    ----------
    inner : Oracle
        The oracle that buys the queries.  When it has a ``calls`` attribute (as
        :class:`~attacker.client.HttpOracle` does), it is set to the call's index before
        each live call, so the sampling seeds of a resumed run equal an uninterrupted run's.
    path : str or Path
        The JSON-lines log.
    resume : bool, default False
        Replay an existing log.  Without it, an existing non-empty log raises.
    url, model_id : str
        Name the target in the header.
    settings : dict, optional
        Learner settings, stored in the header as JSON.
    seed : int, optional
        Seed of the learner and the sampling, stored in the header.
    clock : callable, default time.monotonic
        Seconds, for the duration of each call.
    wall_clock : callable, default time.time
        Unix time, for the time stamps of the header and the records.

    Attributes
    ----------
    ledger : Ledger
        Spending of replayed and live calls together, with the budget of ``inner``.
    replayed, live : CallTally
        Calls served from the log and by ``inner``.

    Raises
    ------
    QueryLogError
        If the log exists and is not empty while ``resume`` is False, if a complete line
        of it is invalid, or if its header does not match this run.
    OSError
        If the file cannot be read or written.

    Notes
    -----
    Replay depends on the order of the calls, so all calls must come from one thread.
    """

    def __init__(
        self,
        inner: Oracle,
        path: str | os.PathLike[str],
        resume: bool = False,
        *,
        url: str = "",
        model_id: str = "",
        settings: dict[str, Any] | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.path = Path(path)
        self.alphabet = inner.alphabet
        self.horizon = inner.horizon
        self.supports_probabilities = inner.supports_probabilities
        self.ledger = Ledger(budget=inner.ledger.budget)
        self.replayed = CallTally()
        self.live = CallTally()
        self.header = QueryLogHeader(
            url=url,
            model_id=model_id,
            alphabet=tuple(inner.alphabet),
            horizon=inner.horizon,
            budget=inner.ledger.budget,
            settings=json.loads(json.dumps(settings or {})),
            seed=seed,
            created=wall_clock(),
        )
        self._clock = clock
        self._wall_clock = wall_clock
        # Logged calls not replayed yet start at self._pending[self._position]; their byte
        # offsets let a mismatch cut them off the file.
        self._pending: list[QueryRecord] = []
        self._offsets: list[int] = []
        self._position = 0
        self._file = self._open(resume)

    # -- the oracle interface ---------------------------------------------------------

    def complete(
        self, prompts: Sequence[Sequence[int]], n: int, max_tokens: int
    ) -> list[Completions]:
        request = [[int(token) for token in prompt] for prompt in prompts]
        n, max_tokens = int(n), int(max_tokens)
        record = self._match("complete", request, n, max_tokens)
        if record is not None:
            self._charge_replay(record, n * len(request))
            return self._logged_completions(record, max_tokens)

        results, cost = self._call_live(
            n * len(request), lambda: self.inner.complete(prompts, n, max_tokens)
        )
        completions = [
            LoggedCompletions(futures=result.futures.tolist(), counts=result.counts.tolist())
            for result in results
        ]
        self._append(QueryRecord(
            method="complete", prompts=request, n=n, max_tokens=max_tokens,
            completions=completions, **asdict(cost),
        ))
        return results

    def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        if not self.supports_probabilities:
            return super().next_token_probs(prompts)
        request = [[int(token) for token in prompt] for prompt in prompts]
        record = self._match("next_token_probs", request, None, None)
        if record is not None:
            self._charge_replay(record, len(request))
            return self._logged_laws(record)

        laws, cost = self._call_live(len(request), lambda: self.inner.next_token_probs(prompts))
        self._append(QueryRecord(
            method="next_token_probs", prompts=request, laws=np.asarray(laws).tolist(),
            **asdict(cost),
        ))
        return laws

    def close(self) -> None:
        """Close the log file; the inner oracle stays open."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def summary(self) -> dict[str, object]:
        """Return the log's path and the calls and samples replayed and bought live."""
        return {
            "path": str(self.path),
            "replayed": self.replayed.to_dict(),
            "live": self.live.to_dict(),
        }

    # -- replay -----------------------------------------------------------------------

    def _match(
        self, method: str, prompts: list[list[int]], n: int | None, max_tokens: int | None
    ) -> QueryRecord | None:
        """Return the next logged record if it matches this call; after a mismatch, drop the rest."""
        if self._position >= len(self._pending):
            return None
        record = self._pending[self._position]
        if record.matches(method, prompts, n, max_tokens):
            self._position += 1
            return record
        self._drop_unreplayed(method)
        return None

    def _drop_unreplayed(self, method: str) -> None:
        """Cut the logged calls from the current one on, because this run no longer makes them."""
        dropped = self._pending[self._position :]
        logger.warning(
            "call %d (%s) differs from the logged call (%s) in %s; dropping the %d logged "
            "calls from there on (%d samples, bought again if needed) and continuing live",
            self._position, method, dropped[0].method, self.path, len(dropped),
            sum(record.samples for record in dropped),
        )
        self._file.flush()
        os.ftruncate(self._file.fileno(), self._offsets[self._position])
        os.fsync(self._file.fileno())
        del self._pending[self._position :]
        del self._offsets[self._position :]

    def _charge_replay(self, record: QueryRecord, requested: int) -> None:
        # The same budget check as a live call, so a replay fails where the original did.
        self.ledger.reserve(requested)
        with self.ledger.in_phase(record.phase):
            self.ledger.charge(record.samples, record.tokens, record.requests)
        self.replayed.add(record.samples, record.tokens)
        if self._position == len(self._pending):
            logger.info(
                "replayed all %d logged calls (%d samples) from %s; continuing live",
                self.replayed.calls, self.replayed.samples, self.path,
            )

    def _logged_completions(self, record: QueryRecord, max_tokens: int) -> list[Completions]:
        logged = record.completions or []
        if len(logged) != len(record.prompts):
            raise QueryLogError(
                f"call {self._position - 1} in {self.path} contains {len(logged)} completions "
                f"for {len(record.prompts)} prompts; the file is damaged, so move it aside "
                "and start a new attack"
            )
        results = []
        for prompt, item in zip(record.prompts, logged):
            length = min(max_tokens, self.horizon - len(prompt))
            futures = np.asarray(item.futures, dtype=np.int64).reshape(len(item.counts), length)
            results.append(Completions(futures, np.asarray(item.counts, dtype=np.int64)))
        return results

    def _logged_laws(self, record: QueryRecord) -> NDArray[np.float64]:
        laws = np.asarray(record.laws or [], dtype=np.float64)
        if laws.shape != (len(record.prompts), self.alphabet_size):
            raise QueryLogError(
                f"call {self._position - 1} in {self.path} contains laws of shape {laws.shape} "
                f"for {len(record.prompts)} prompts and A={self.alphabet_size}; the file is "
                "damaged, so move it aside and start a new attack"
            )
        return laws

    # -- live calls -------------------------------------------------------------------

    def _call_live(self, requested: int, call: Callable[[], T]) -> tuple[T, _Cost]:
        """Run ``call`` on the inner oracle and charge what it spent, also when it fails."""
        self.ledger.reserve(requested)
        if isinstance(self.inner, _CallIndexed):
            self.inner.calls = self._position
        inner = self.inner.ledger
        before = (inner.samples, inner.tokens, inner.requests)
        started = self._clock()
        try:
            result = call()
        finally:
            spent = (inner.samples - before[0], inner.tokens - before[1], inner.requests - before[2])
            # A failed call may have bought part of its samples; the ledger counts them.
            if any(spent):
                self.ledger.charge(*spent)
                self.live.samples += spent[0]
                self.live.tokens += spent[1]
        # NOTE: the log has one line per call.  If the process dies during a call that the
        # inner oracle split into several HTTP requests, the requests of it that completed
        # are bought again on resume.
        self._position += 1
        self.live.calls += 1
        seconds = self._clock() - started
        return result, _Cost(*spent, self.ledger.phase, self._wall_clock(), round(seconds, 6))

    def _append(self, record: QueryRecord) -> None:
        self._file.flush()
        # The size, not tell(): after a truncation the position of an appending file is stale.
        self._offsets.append(os.fstat(self._file.fileno()).st_size)
        self._pending.append(record)
        self._write_line(record.model_dump_json(exclude_none=True))
        logger.debug("logged call %d (%s, %d samples)", self._position - 1, record.method,
                     record.samples)

    def _write_line(self, text: str) -> None:
        self._file.write(text.encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    # -- opening the file -------------------------------------------------------------

    def _open(self, resume: bool) -> io.BufferedWriter:
        """Open the log for appending, after reading and checking it when resuming."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size and not resume:
            raise QueryLogError(
                f"query log {self.path} already exists and is not empty; continue the attack "
                "it records with --resume, or pass another --query-log path"
            )
        if size:
            size = self._read()
        handle = self.path.open("ab")
        if size == 0:
            handle.truncate(0)
            handle.write(self.header.model_dump_json().encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            _fsync_directory(self.path.parent)
            logger.info("started query log %s", self.path)
        return handle

    def _read(self) -> int:
        """Load the logged calls; drop a torn last line; return the size of the valid part."""
        data = self.path.read_bytes()
        valid = data.rfind(b"\n") + 1
        if valid < len(data):
            logger.warning(
                "dropping the torn last line of %s (%d bytes, written when the process was "
                "stopped); its call will be bought again", self.path, len(data) - valid,
            )
            with self.path.open("r+b") as handle:
                handle.truncate(valid)
                os.fsync(handle.fileno())
        if valid == 0:
            return 0

        lines = data[:valid].split(b"\n")[:-1]
        self._check_header(lines[0])
        offset = len(lines[0]) + 1
        for number, line in enumerate(lines[1:], start=2):
            try:
                self._pending.append(QueryRecord.model_validate_json(line))
            except ValidationError as exc:
                raise QueryLogError(
                    f"line {number} of query log {self.path} is not a valid call record "
                    f"({exc.errors()[0]['msg']}); the file is damaged, so move it aside and "
                    "start a new attack"
                ) from exc
            self._offsets.append(offset)
            offset += len(line) + 1
        logger.info(
            "query log %s contains %d calls (%d samples) to replay", self.path, len(self._pending),
            sum(record.samples for record in self._pending),
        )
        return valid

    def _check_header(self, line: bytes) -> None:
        try:
            fields = json.loads(line)
        except ValueError as exc:
            raise QueryLogError(f"{self.path} does not start with a query-log header") from exc
        if not isinstance(fields, dict) or fields.get("format") != LOG_FORMAT:
            raise QueryLogError(
                f"{self.path} is not a query log (format {LOG_FORMAT!r}); pass another "
                "--query-log path"
            )
        if fields.get("version") != LOG_VERSION:
            raise QueryLogError(
                f"query log {self.path} has version {fields.get('version')!r}, but this "
                f"program reads version {LOG_VERSION}; start a new log with another --query-log path"
            )
        try:
            logged = QueryLogHeader.model_validate(fields)
        except ValidationError as exc:
            raise QueryLogError(f"the header of query log {self.path} is invalid: {exc}") from exc
        changed = logged.differences(self.header)
        if changed:
            raise QueryLogError(
                f"query log {self.path} was written by another attack ({'; '.join(changed)}); "
                "resume with the same target, budget, settings and seed, or pass another "
                "--query-log path"
            )


def _fsync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable (POSIX; a no-op where unsupported)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
