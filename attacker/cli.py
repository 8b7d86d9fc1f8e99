"""Command line of the attacker, ``lowrank-attack``: steal, score, demo, baselines, comparison.

Results go to stdout (a table, or JSON with ``--json``); progress and errors go to stderr.
Exit status: 0 on success, 1 when the server or the network fails (unreachable URL,
rejected key, quota spent) or ``steal --deadline`` passes, 2 for invalid arguments, an
unreadable input file or an unusable query log, and 130 after Ctrl-C.

``steal`` appends every query and its response to a query log (default: ``--out`` with the
suffix ``.queries.jsonl``), so ``steal --resume`` with the same arguments continues an
interrupted attack without buying the logged queries again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from attacker.baselines import (
    BASELINE_NAMES,
    BaselineOptions,
    MissingDependencyError,
    buy_samples,
    check_baseline_available,
    check_baseline_inputs,
    fit_baseline,
    save_baseline,
)
from attacker.client import AuthenticationError, DeadlineExceededError, HttpJudge, HttpOracle
from attacker.clone import load_any_model
from attacker.compare import (
    LEARNER_NAME,
    ComparisonInputError,
    compare_over_http,
    comparison_table,
    rows_to_json,
    write_csv,
)
from attacker.demo import ServerStartError, run_demo
from attacker.evaluate import evaluate, report_to_dict
from attacker.learner import LearnerSettings, learn
from attacker.oracle import Oracle, OracleError
from attacker.querylog import LoggedOracle, QueryLogError

__all__ = [
    "AttackFailedError",
    "UsageError",
    "app",
    "default_query_log",
    "main",
    "run_baseline",
    "run_compare",
    "run_evaluate",
    "run_steal",
]

logger = logging.getLogger(__name__)

# Larger budgets cannot be spent in any sensible time, and planning their requests alone
# would exhaust memory.
MAX_BUDGET = 10**12
# Reference sequences that evaluate and compare hold in memory at once.
MAX_SEQUENCES = 10_000_000
# Characters per line of tables printed to a file or pipe.
_FILE_WIDTH = 200

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="lowrank-attack",
    help="Steal a low-rank sequence model from a lowrank-steal server and score the clone.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class SketchChoice(str, Enum):
    auto = "auto"
    prefix = "prefix"
    sampled_future = "sampled-future"


class ProjectionChoice(str, Enum):
    kl = "kl"
    clip = "clip"
    none = "none"


class BaselineChoice(str, Enum):
    em = "em"
    spectral = "spectral"
    empirical = "empirical"
    ngram = "ngram"


class UsageError(Exception):
    """An invalid argument or input file, reported with exit status 2."""


class AttackFailedError(Exception):
    """The learner stopped with an error, reported with exit status 1."""


@app.callback()
def _configure(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every HTTP request (DEBUG) on stderr.")
    ] = False,
) -> None:
    """Steal a low-rank sequence model from a lowrank-steal server and score the clone."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # httpx logs each request at INFO; ours are at DEBUG with the same detail.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and an exit status, without a traceback."""
    try:
        yield
    except UsageError as exc:
        _fail(str(exc), EXIT_USAGE)
    except (OracleError, AttackFailedError, ServerStartError, OSError) as exc:
        _fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> None:
    typer.echo(f"lowrank-attack: error: {message}", err=True)
    raise typer.Exit(code)


def _open_oracle(url: str, api_key: str, budget: int, **options: Any) -> HttpOracle:
    try:
        return HttpOracle(url, api_key, budget, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def run_steal(
    url: str,
    api_key: str,
    budget: int,
    out: Path,
    settings: dict[str, Any],
    seed: int = 0,
    max_concurrency: int = 8,
    max_retries: int = 5,
    clock: Callable[[], float] = time.monotonic,
    query_log: Path | None = None,
    resume: bool = False,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Learn a clone through the server at ``url``, save it to ``out`` and return a summary.

    Parameters
    ----------
    settings : dict
        Fields of :class:`attacker.learner.LearnerSettings`.
    seed : int
        Seeds the learner and the server-side sampling of every request.
    query_log : Path, optional
        Append every call and its response to this JSON-lines file
        (:class:`attacker.querylog.LoggedOracle`); default: no log.
    resume : bool, default False
        Replay ``query_log`` first and buy only the calls it does not hold.
    deadline : float, optional
        Seconds from the start after which no request is sent; the attack then stops
        with :class:`AttackFailedError` and the query log keeps every completed call.

    Raises
    ------
    UsageError
        For an invalid budget, setting, URL, output directory, deadline or query log
        (one that exists without ``resume``, or belongs to another attack), before any
        query is bought.
    OracleError, AttackFailedError, OSError
        If the server, the learner or the saving fails, or the deadline passes.
    """
    learner_settings = _check_steal_inputs(budget, out, settings, query_log, resume, deadline)

    started = clock()
    stop_at = None if deadline is None else started + deadline
    with _open_oracle(
        url, api_key, budget, max_concurrency=max_concurrency, max_retries=max_retries,
        sampling_seed=seed, clock=clock, deadline=stop_at,
    ) as http, _logged_oracle(
        _check_quota(_check_minimum_budget(http, budget), budget, resume), query_log, resume,
        learner_settings, seed,
    ) as oracle:
        logger.info(
            "stealing %s from %s: A=%d, H=%d, budget %d samples",
            http.model_info.model_id, http.base_url, http.alphabet_size, http.horizon, budget,
        )
        try:
            clone = learn(oracle, learner_settings, np.random.default_rng(seed))
        except DeadlineExceededError as exc:
            raise AttackFailedError(_deadline_message(deadline, oracle, query_log, exc)) from exc
        except ValueError as exc:
            # A prompt of probability zero, or a setting this target cannot serve.
            raise AttackFailedError(f"the attack failed: {exc}") from exc
        clone.save(out)
        ledger = oracle.ledger
        return {
            "out": str(out),
            "model_id": http.model_info.model_id,
            "budget": budget,
            "samples": ledger.samples,
            "tokens": ledger.tokens,
            "requests": ledger.requests,
            "retries": http.retries,
            "ranks": list(clone.ranks),
            "sketches": list(clone.sketches),
            "by_phase": {phase: dict(row) for phase, row in ledger.by_phase.items()},
            "query_log": oracle.summary() if isinstance(oracle, LoggedOracle) else None,
            "seconds": round(clock() - started, 3),
        }


@contextmanager
def _logged_oracle(
    http: HttpOracle,
    query_log: Path | None,
    resume: bool,
    settings: LearnerSettings,
    seed: int,
) -> Iterator[Oracle]:
    """Wrap ``http`` in a :class:`LoggedOracle` writing ``query_log``, or return it as is."""
    if query_log is None:
        yield http
        return
    try:
        logged = LoggedOracle(
            http, query_log, resume, url=http.base_url, model_id=http.model_info.model_id,
            settings=settings.model_dump(), seed=seed,
        )
    except QueryLogError as exc:
        raise UsageError(str(exc)) from exc
    try:
        with logged:
            yield logged
    except BaseException:
        if not resume and logged.live.calls == 0:
            # Only the header was written; a kept file would block the corrected command.
            query_log.unlink(missing_ok=True)
            logger.info("removed the query log %s because no query completed", query_log)
        raise


def _deadline_message(
    deadline: float | None, oracle: Oracle, query_log: Path | None, exc: Exception
) -> str:
    spent = f"stopped at the --deadline of {deadline:g} s after {oracle.ledger.samples} samples"
    if query_log is None:
        return f"{spent} ({exc}); without a query log the samples bought are not kept"
    return (
        f"{spent} ({exc}); the query log {query_log} keeps every completed call, so rerun "
        "the same command with --resume to continue"
    )


def _check_steal_inputs(
    budget: int,
    out: Path,
    settings: dict[str, Any],
    query_log: Path | None = None,
    resume: bool = False,
    deadline: float | None = None,
) -> LearnerSettings:
    """Validate the arguments of ``steal`` before any query is bought."""
    _check_budget_and_out(budget, out)
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise UsageError(f"--deadline must be a positive number of seconds, got {deadline}")
    if query_log is not None:
        _check_query_log(query_log, out, resume)
    try:
        return LearnerSettings(**settings)
    except ValidationError as exc:
        raise UsageError(f"invalid learner settings: {_first_error(exc)}") from exc


def _check_query_log(query_log: Path, out: Path, resume: bool) -> None:
    if query_log.resolve() == out.resolve():
        raise UsageError(f"--query-log and --out are both {out}; choose another --query-log path")
    if not query_log.parent.is_dir():
        raise UsageError(
            f"query log directory {query_log.parent} does not exist; create it first"
        )
    if not os.access(query_log.parent, os.W_OK):
        raise UsageError(
            f"query log directory {query_log.parent} is not writable; choose another --query-log"
        )
    if not resume and query_log.exists() and query_log.stat().st_size > 0:
        raise UsageError(
            f"query log {query_log} already exists and is not empty; continue the attack it "
            "records with --resume, or pass another --query-log path"
        )


def default_query_log(out: Path) -> Path:
    """Return the query log of ``steal --out OUT``: ``OUT`` with the suffix ``.queries.jsonl``."""
    return out.with_suffix(".queries.jsonl")


def _check_minimum_budget(http: HttpOracle, budget: int) -> HttpOracle:
    """Return ``http`` unless ``budget`` is below the learner's minimum of ``H * A`` samples."""
    minimum = http.horizon * http.alphabet_size
    if budget < minimum:
        raise UsageError(
            f"--budget {budget} is too small for a model with H={http.horizon} and "
            f"A={http.alphabet_size}; use a budget of at least {minimum} samples"
        )
    return http


def _check_quota(http: HttpOracle, budget: int, resume: bool) -> HttpOracle:
    """Return ``http`` unless the key's quota cannot pay ``budget``; then raise UsageError.

    It runs before the query log is opened and any sample is bought.  A resumed attack
    replays part of its budget from the log, so it is only warned.
    """
    remaining = http.quota_remaining()
    if remaining is None or remaining >= budget:
        return http
    message = (
        f"--budget {budget} exceeds the {remaining} samples left on this key's quota, so the "
        f"attack would stop part-way and waste them; use --budget {remaining} or less"
    )
    if resume:
        logger.warning("%s (unless the query log replays the difference)", message)
        return http
    raise UsageError(message)


def _console() -> Console:
    """Return a console for results; off a terminal it is wide, so saved tables keep every digit."""
    return Console() if sys.stdout.isatty() else Console(width=_FILE_WIDTH)


def _check_sequences(sequences: int) -> None:
    if sequences < 2:
        raise UsageError(f"--sequences must be at least 2, got {sequences}")
    if sequences > MAX_SEQUENCES:
        raise UsageError(f"--sequences must be at most {MAX_SEQUENCES:,}, got {sequences:,}")


def _check_compare_access(
    url: str, api_key: str, admin_key: str, budgets: list[int], learners: list[str]
) -> None:
    """Check the admin key and the client key's quota before ``compare`` buys anything.

    At each budget the learner spends at most the budget and the baselines share one
    purchase of at most the budget, so the worst case is the sum over budgets of one
    budget per kind of method.
    """
    kinds = int(LEARNER_NAME in learners) + int(any(name != LEARNER_NAME for name in learners))
    needed = kinds * sum(budgets)
    with _open_oracle(url, api_key, needed) as http:
        remaining = http.quota_remaining()
    if remaining is not None and remaining < needed:
        raise UsageError(
            f"--budgets need up to {needed:,} samples but this key's quota has {remaining:,} "
            "left; lower --budgets or ask the operator for more quota"
        )
    # Scoring one token is free and needs the admin key, so a wrong key fails here.
    try:
        with HttpJudge(url, admin_key) as judge:
            judge.judge_log_probs(np.zeros((1, 1), dtype=np.int64))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except AuthenticationError as exc:
        raise UsageError(
            f"invalid --admin-key: the server rejected it for scoring ({exc}); pass the server's admin key"
        ) from exc


def _check_budget(budget: int, flag: str = "--budget") -> None:
    if budget <= 0:
        raise UsageError(f"{flag} must be a positive number of samples, got {budget}")
    if budget > MAX_BUDGET:
        raise UsageError(f"{flag} must be at most {MAX_BUDGET:,} samples, got {budget:,}")


def _check_budget_and_out(budget: int, out: Path) -> None:
    _check_budget(budget)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file path such as {out / 'clone.json'}")
    if not out.parent.is_dir():
        raise UsageError(f"output directory {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"output directory {out.parent} is not writable; choose another --out")


def run_baseline(
    name: str,
    url: str,
    api_key: str,
    budget: int,
    out: Path,
    options: BaselineOptions,
    seed: int = 0,
    max_concurrency: int = 8,
    max_retries: int = 5,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Buy ``budget`` full sequences, fit baseline ``name``, save it to ``out``; return a summary.

    Raises
    ------
    UsageError
        For an invalid budget, output directory or option, a baseline that cannot fit the
        server's model, or a missing optional package, before any sample is bought.
    OracleError, AttackFailedError, OSError
        If the server, the fit or the saving fails.
    """
    _check_budget_and_out(budget, out)
    try:
        check_baseline_available(name)
    except (ValueError, MissingDependencyError) as exc:
        raise UsageError(str(exc)) from exc

    started = clock()
    with _open_oracle(
        url, api_key, budget, max_concurrency=max_concurrency, max_retries=max_retries,
        sampling_seed=seed,
    ) as oracle:
        try:
            check_baseline_inputs(name, oracle.alphabet_size, oracle.horizon, options)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        _check_quota(oracle, budget, resume=False)
        logger.info("buying %d samples of %s for the %s baseline", budget,
                    oracle.model_info.model_id, name)
        samples = buy_samples(oracle, budget)
        ledger, model_id = oracle.ledger, oracle.model_info.model_id
    try:
        result = fit_baseline(name, samples, options, np.random.default_rng(seed), clock)
    except ValueError as exc:
        raise AttackFailedError(f"the {name} baseline failed: {exc}") from exc
    save_baseline(result.model, out, result.metadata())
    return {
        "out": str(out),
        "model_id": model_id,
        "baseline": name,
        "budget": budget,
        "samples": ledger.samples,
        "tokens": ledger.tokens,
        "requests": ledger.requests,
        "fitted_on": result.fitted_on,
        "seconds": round(clock() - started, 3),
        "note": result.note,
    }


def run_compare(
    url: str,
    api_key: str,
    admin_key: str,
    budgets: str,
    learners: str,
    settings: dict[str, Any],
    options: BaselineOptions,
    sequences: int = 5000,
    seed: int = 0,
    csv_path: Path | None = None,
) -> dict[str, Any]:
    """Compare the learner and the baselines at each budget; write the CSV; return a summary.

    Parameters
    ----------
    budgets, learners : str
        Comma-separated lists, such as ``"100000,1000000"`` and ``"liu-moitra,em"``.
    settings : dict
        Fields of :class:`attacker.learner.LearnerSettings`.

    Raises
    ------
    UsageError
        For invalid lists, settings or paths, before any query is bought.
    """
    try:
        budget_list = [int(item) for item in budgets.split(",") if item.strip()]
    except ValueError as exc:
        raise UsageError(f"--budgets must be comma-separated integers, got {budgets!r}") from exc
    learner_list = [item.strip() for item in learners.split(",") if item.strip()]
    for budget in budget_list:
        _check_budget(budget, "each of --budgets")
    _check_sequences(sequences)
    if csv_path is not None and not csv_path.parent.is_dir():
        raise UsageError(f"output directory {csv_path.parent} does not exist; create it first")
    if csv_path is not None and not os.access(csv_path.parent, os.W_OK):
        raise UsageError(f"output directory {csv_path.parent} is not writable; choose another --csv")
    try:
        learner_settings = LearnerSettings(**settings)
    except ValidationError as exc:
        raise UsageError(f"invalid learner settings: {_first_error(exc)}") from exc
    _check_compare_access(url, api_key, admin_key, budget_list, learner_list)
    try:
        model_id, rows = compare_over_http(
            url, api_key, admin_key, budget_list, learner_list, learner_settings, options,
            sequences, seed,
        )
    except (ComparisonInputError, MissingDependencyError) as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        # A prompt of probability zero, or a fit that failed.
        raise AttackFailedError(f"the comparison failed: {exc}") from exc
    if csv_path is not None:
        write_csv(rows, csv_path)
    return {
        "model_id": model_id,
        "csv": None if csv_path is None else str(csv_path),
        "rows": rows_to_json(rows),
    }


def run_evaluate(
    clone_path: Path, url: str, admin_key: str, sequences: int = 5000, seed: int = 0
) -> dict[str, Any]:
    """Score the model file at ``clone_path`` against the server's judge; return a summary.

    Raises
    ------
    UsageError
        If the file cannot be loaded, ``sequences < 2`` or the URL is invalid.
    OracleError
        If the server fails or rejects the admin key.
    """
    _check_sequences(sequences)
    try:
        model = load_any_model(clone_path)
    except ValueError as exc:
        raise UsageError(f"cannot load {clone_path}: {exc}") from exc
    try:
        judge = HttpJudge(url, admin_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    with judge:
        try:
            report = evaluate(model, judge, sequences, np.random.default_rng(seed))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    summary: dict[str, Any] = dict(report_to_dict(report))
    summary["model_id"] = judge.model_info.model_id
    summary["clone"] = str(clone_path)
    ledger = getattr(model, "ledger", None)
    if ledger:
        summary["queries"] = ledger
    return summary


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    return f"{field}: {error['msg']} (got {error.get('input')!r})"


# -- output ---------------------------------------------------------------------------


def _print_json(summary: dict[str, Any]) -> None:
    typer.echo(json.dumps(summary, indent=2, allow_nan=False))


def print_steal_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the queries and shape of a stolen clone as tables."""
    table = Table(title=f"Stolen {summary['model_id']} -> {summary['out']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name in ("samples", "tokens", "requests", "retries", "budget", "seconds"):
        value = summary[name]
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    log = summary.get("query_log")
    if log:
        table.add_row("query log", log["path"])
        table.add_row("samples replayed from the log", f"{log['replayed']['samples']:,}")
        table.add_row("samples bought live", f"{log['live']['samples']:,}")
    table.add_row("ranks per step", " ".join(str(r) for r in summary["ranks"]))
    table.add_row("sketch per step", " ".join(summary["sketches"]))
    console.print(table)

    phases = Table(title="Spend per phase")
    for column in ("phase", "samples", "tokens", "requests"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for phase, row in summary["by_phase"].items():
        phases.add_row(phase, f"{row['samples']:,}", f"{row['tokens']:,}", f"{row['requests']:,}")
    console.print(phases)


def print_evaluate_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the distance of a clone to the server's model as a table."""
    table = Table(title=f"{summary['clone']} vs {summary['model_id']} ({summary['method']})")
    table.add_column("score")
    table.add_column("value", justify="right")
    table.add_column("stderr", justify="right")
    table.add_row("TV", _number(summary["tv"]), _number(summary["tv_stderr"]))
    table.add_row("TV, 95% upper bound", _number(summary["tv_upper95"]), "")
    table.add_row("KL (nats)", _number(summary["kl"]), _number(summary["kl_stderr"]))
    table.add_row("sequences", f"{summary['sequences']:,}", "")
    queries = summary.get("queries")
    if isinstance(queries, dict):
        for name in ("samples", "tokens", "requests"):
            if name in queries:
                table.add_row(f"clone cost: {name}", f"{queries[name]:,}", "")
    console.print(table)


def _number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if math.isfinite(value) else str(value)


# -- commands -------------------------------------------------------------------------


UrlArgument = Annotated[
    str, typer.Argument(metavar="URL", help="Server root, e.g. http://127.0.0.1:8000.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of all randomness of the command.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command()
def steal(
    url: UrlArgument,
    api_key: Annotated[
        str,
        typer.Option("--api-key", envvar="LOWRANK_API_KEY", help="Client API key."),
    ],
    budget: Annotated[int, typer.Option("--budget", help="Hard cap on samples to buy.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the clone (JSON).")],
    rank: Annotated[
        int | None,
        typer.Option("--rank", help="Rank to use at every step; default: estimated from the noise floor."),
    ] = None,
    seed: SeedOption = 0,
    future_length: Annotated[
        int, typer.Option("--future-length", help="Future length L of the prefix sketch, in tokens.")
    ] = 2,
    sketch: Annotated[
        SketchChoice, typer.Option("--sketch", help="Sketch that picks the spanner histories.")
    ] = SketchChoice.auto,
    projection: Annotated[
        ProjectionChoice, typer.Option("--projection", help="State correction of the clone.")
    ] = ProjectionChoice.kl,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Requests in flight at once.")
    ] = 8,
    max_retries: Annotated[
        int, typer.Option("--max-retries", help="Retries per request after errors and timeouts.")
    ] = 5,
    query_log: Annotated[
        Path | None,
        typer.Option(
            "--query-log",
            help="Append-only JSON-lines log of every query and response; default: --out "
            "with the suffix .queries.jsonl.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Replay the query log without buying its queries again, then continue.",
        ),
    ] = False,
    deadline: Annotated[
        float | None,
        typer.Option(
            "--deadline",
            help="Seconds after which the attack stops with exit status 1, keeping the "
            "query log for --resume; default: none.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Buy samples from the server at URL and learn a clone of its model."""
    settings: dict[str, Any] = {
        "rank": rank,
        "future_length": future_length,
        "sketch": sketch.value,
        "projection": projection.value,
    }
    log_path = query_log if query_log is not None else default_query_log(out)
    with _reported_errors():
        summary = run_steal(
            url, api_key, budget, out, settings, seed=seed,
            max_concurrency=max_concurrency, max_retries=max_retries,
            query_log=log_path, resume=resume, deadline=deadline,
        )
    if as_json:
        _print_json(summary)
    else:
        print_steal_summary(summary, _console())


@app.command("evaluate")
def evaluate_command(
    clone: Annotated[
        Path, typer.Argument(metavar="CLONE", help="Clone or model file to score.")
    ],
    url: UrlArgument,
    admin_key: Annotated[
        str,
        typer.Option("--admin-key", envvar="LOWRANK_ADMIN_KEY", help="The server's admin key."),
    ],
    sequences: Annotated[
        int, typer.Option("--sequences", help="Reference sequences for Monte Carlo scoring.")
    ] = 5000,
    seed: SeedOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Score CLONE against the model behind URL (TV and KL, exact when small enough)."""
    with _reported_errors():
        summary = run_evaluate(clone, url, admin_key, sequences, seed)
    if as_json:
        _print_json(summary)
    else:
        print_evaluate_summary(summary, _console())


@app.command()
def demo(
    model: Annotated[
        str,
        typer.Option("--model", help="Preset, preset with parameters, or model file to host."),
    ] = "english-words",
    budget: Annotated[int, typer.Option("--budget", help="Samples the attack may buy.")] = 2_000_000,
    seed: SeedOption = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Keep the clone here; default: a temporary file.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start a local server, steal its model, score the clone, and stop the server."""
    with _reported_errors():
        result = run_demo(model, budget, seed, out)
    if as_json:
        _print_json(result)
        return
    console = _console()
    print_steal_summary(result["steal"], console)
    print_evaluate_summary(result["evaluate"], console)
    scores = result["evaluate"]
    console.print(
        f"TV {_number(scores['tv'])} (95% upper bound {_number(scores['tv_upper95'])}), "
        f"KL {_number(scores['kl'])} nats, from {result['steal']['samples']:,} samples"
    )


StatesOption = Annotated[
    int | None,
    typer.Option("--states", help="Hidden states S of the em and spectral baselines; default 4."),
]
OrderOption = Annotated[
    int, typer.Option("--order", help="Order k of the ngram baseline (tokens of context).")
]
TimeLimitOption = Annotated[
    float, typer.Option("--time-limit", help="Seconds the em baseline may spend fitting.")
]
RestartsOption = Annotated[
    int, typer.Option("--restarts", help="Random starts of the em baseline.")
]


def _baseline_options(
    states: int | None, order: int, time_limit: float, restarts: int,
    pseudocount: float | None = None,
) -> BaselineOptions:
    try:
        return BaselineOptions(
            states=4 if states is None else states, order=order, pseudocount=pseudocount,
            restarts=restarts, time_limit=time_limit,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@app.command()
def baseline(
    name: Annotated[
        BaselineChoice,
        typer.Argument(metavar="NAME", help="Baseline: " + ", ".join(BASELINE_NAMES) + "."),
    ],
    url: UrlArgument,
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="LOWRANK_API_KEY", help="Client API key.")
    ],
    budget: Annotated[int, typer.Option("--budget", help="Full-sequence samples to buy.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the model file (JSON).")],
    states: StatesOption = None,
    order: OrderOption = 2,
    pseudocount: Annotated[
        float | None,
        typer.Option("--pseudocount", help="Added to each next-token count of empirical "
                     "(default 0.5) and ngram (default 1)."),
    ] = None,
    time_limit: TimeLimitOption = 3600.0,
    restarts: RestartsOption = 4,
    seed: SeedOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Buy full sequences from the server at URL and fit a classical baseline to them."""
    with _reported_errors():
        options = _baseline_options(states, order, time_limit, restarts, pseudocount)
        summary = run_baseline(name.value, url, api_key, budget, out, options, seed=seed)
    if as_json:
        _print_json(summary)
        return
    title = f"Baseline {summary['baseline']} of {summary['model_id']} -> {summary['out']}"
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key in ("samples", "tokens", "requests", "fitted_on", "seconds"):
        value = summary[key]
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    if summary["note"]:
        table.add_row("note", summary["note"])
    _console().print(table)


@app.command()
def compare(
    url: UrlArgument,
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="LOWRANK_API_KEY", help="Client API key.")
    ],
    admin_key: Annotated[
        str,
        typer.Option("--admin-key", envvar="LOWRANK_ADMIN_KEY", help="The server's admin key."),
    ],
    budgets: Annotated[
        str,
        typer.Option("--budgets", help="Comma-separated budgets in samples, e.g. 100000,1000000."),
    ],
    learners: Annotated[
        str,
        typer.Option("--learners", help=f"Comma-separated methods from {LEARNER_NAME}, "
                     + ", ".join(BASELINE_NAMES) + "."),
    ] = f"{LEARNER_NAME},em,spectral,empirical",
    rank: Annotated[
        int | None,
        typer.Option("--rank", help="Rank of the learner at every step; default: estimated."),
    ] = None,
    states: Annotated[
        int | None,
        typer.Option(
            "--states", help="Hidden states S of em and spectral; default --rank, else 4."
        ),
    ] = None,
    order: OrderOption = 2,
    time_limit: TimeLimitOption = 3600.0,
    restarts: RestartsOption = 4,
    sequences: Annotated[
        int, typer.Option("--sequences", help="Reference sequences of each Monte Carlo score.")
    ] = 5000,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the table to this CSV file.")
    ] = None,
    seed: SeedOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Run the learner and the baselines on the server at URL at each budget; tabulate TV and KL."""
    with _reported_errors():
        options = _baseline_options(states if states is not None else rank, order, time_limit,
                                    restarts)
        summary = run_compare(url, api_key, admin_key, budgets, learners, {"rank": rank}, options,
                              sequences, seed, csv_path)
    if as_json:
        _print_json(summary)
    else:
        _console().print(comparison_table(summary["rows"], f"Learners on {summary['model_id']}"))


def main() -> None:
    """Entry point of the ``lowrank-attack`` script."""
    app()


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that logger names and exception
    # classes are the ones the other attacker modules see.
    from attacker.cli import main as _main

    _main()
