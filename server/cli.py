"""Command line of the model server: ``lowrank-server --model NAME_OR_PATH --api-key KEY ...``.

Keys given with ``--api-key`` and ``--admin-key`` are visible in the process list.  Prefer
the environment variables ``LOWRANK_API_KEYS`` (comma-separated) and ``LOWRANK_ADMIN_KEY``,
or a keys file of hashed keys (``--keys-file``).  Flags take precedence over the
environment.

By default one uvicorn worker keeps the rate-limit windows in memory and the usage ledger
in ``lowrank-ledger.sqlite3`` in the working directory.  ``--workers N --redis-url URL``
runs N workers that share the windows in Redis and the ledger file; each worker builds
its app with :func:`server.app.app_from_env`.

``lowrank-server hash-key`` and ``lowrank-server audit`` are operator commands
(:mod:`server.operator_cli`).

Exit status 2 means bad arguments, an unknown model name, an invalid model file or keys
file, or a ledger that cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError

from server.app import configure_logging, create_app, load_hosted_model
from server.auth import KeyRing
from server.keys import KeysFileError
from server.ledger import Ledger, LedgerError
from server.metrics import MULTIPROC_DIR_ENV
from server.operator_cli import OPERATOR_COMMANDS, run_operator_command
from server.settings import ADMIN_KEY_ENV, API_KEYS_ENV, REDIS_URL_ENV, SETTINGS_ENV, Settings
from server.window_storage import window_storage

__all__ = ["DEFAULT_LEDGER_PATH", "build_parser", "main", "parse_settings"]

logger = logging.getLogger(__name__)

DEFAULT_LEDGER_PATH = "lowrank-ledger.sqlite3"
WORKER_APP = "server.app:app_from_env"

_UNLIMITED = ("none", "unlimited")


def _limit(text: str) -> int | None:
    """Parse a positive integer limit, or ``unlimited``/``none`` for no limit."""
    if text.strip().lower() in _UNLIMITED:
        return None
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'unlimited', got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; options left out keep the :class:`Settings` defaults."""
    parser = argparse.ArgumentParser(
        prog="lowrank-server",
        description="Serve a secret sequence model over HTTP with rate limits and quotas.",
        epilog=f"Keys may also come from {API_KEYS_ENV} (comma-separated) and {ADMIN_KEY_ENV}, "
        f"the Redis URL from {REDIS_URL_ENV}.  Operator commands: 'lowrank-server hash-key "
        "--help', 'lowrank-server audit --help'.",
        argument_default=argparse.SUPPRESS,
    )
    _add_serving_options(parser.add_argument_group("model and network"))
    _add_scale_options(parser.add_argument_group("workers and storage"))
    _add_key_options(parser.add_argument_group("keys"))
    _add_rate_options(parser.add_argument_group("rate limits and quota (per client key)"))
    _add_size_options(parser.add_argument_group("request size limits"))
    return parser


def _add_serving_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_PATH",
        help="preset name, 'preset:key=value,...', or model file path",
    )
    group.add_argument(
        "--model-id",
        metavar="NAME",
        help="name published for the model (default: the preset name without its "
        "parameters, which may include a secret seed, or the file name)",
    )
    group.add_argument("--host", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
    group.add_argument("--port", type=int, metavar="PORT", help="TCP port (default 8000)")
    group.add_argument(
        "--probabilities",
        action=argparse.BooleanOptionalAction,
        help="sell exact next-token laws (default off)",
    )
    group.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO"
    )


def _add_scale_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--workers", type=int, metavar="N", help="uvicorn worker processes (default 1)"
    )
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="keep the rate-limit windows in Redis, shared by all workers and replicas "
        "(redis://HOST:PORT/DB); required with --workers above 1",
    )
    group.add_argument(
        "--ledger",
        metavar="PATH",
        help=f"SQLite file of usage, quotas and the query audit (default {DEFAULT_LEDGER_PATH})",
    )
    group.add_argument(
        "--ledger-sync",
        choices=["normal", "full"],
        help="'normal' (default): charges survive a crash of the server; 'full': they also "
        "survive power loss, with one fsync per request",
    )


def _add_key_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--keys-file",
        metavar="PATH",
        help="TOML file of hashed client keys with per-key limits (see 'hash-key')",
    )
    group.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="client API key; repeatable",
    )
    group.add_argument(
        "--admin-key", metavar="KEY", help="admin key: judge endpoint, no rate limit or quota"
    )


def _add_rate_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--requests-per-window", type=int, metavar="N", help="requests per window (default 600)"
    )
    group.add_argument(
        "--samples-per-window",
        type=_limit,
        metavar="N",
        help="samples per window, or 'unlimited' (default 1000000)",
    )
    group.add_argument(
        "--window-seconds", type=int, metavar="SECONDS", help="window length (default 60)"
    )
    group.add_argument(
        "--quota-samples",
        type=_limit,
        metavar="N",
        help="lifetime samples, or 'unlimited' (default unlimited)",
    )


def _add_size_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-prompts",
        dest="max_prompts_per_request",
        type=int,
        metavar="N",
        help="prompts per request (default 1000)",
    )
    group.add_argument(
        "--max-n",
        dest="max_samples_per_prompt",
        type=int,
        metavar="N",
        help="samples per prompt (default 100000)",
    )
    group.add_argument(
        "--max-tokens-per-request",
        type=int,
        metavar="N",
        help="n times the completion tokens summed over prompts (default 5000000)",
    )
    group.add_argument(
        "--max-judge-sequences", type=int, metavar="N", help="sequences per judge request"
    )
    group.add_argument(
        "--max-body-bytes", type=int, metavar="BYTES", help="request body size (default 4 MiB)"
    )


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse command-line arguments (and the key variables) into settings.

    Raises
    ------
    SystemExit
        With status 2 and a usage message for invalid arguments or settings.
    """
    parser = build_parser()
    values: dict[str, Any] = vars(parser.parse_args(argv))
    if "api_keys" in values:
        values["api_keys"] = tuple(values["api_keys"])
    values.setdefault("ledger", DEFAULT_LEDGER_PATH)
    try:
        return Settings.from_env(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: "
            + str(item["msg"]).removeprefix("Value error, ")
            for item in error.errors()
        )
        parser.error(f"invalid settings: {problems}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run an operator command, or parse the arguments, check them and serve until stopped."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in OPERATOR_COMMANDS:
        sys.exit(run_operator_command(args))

    settings = parse_settings(args)
    configure_logging(settings)
    try:
        model = load_hosted_model(settings.model)
    except (ValueError, OSError) as error:
        _exit_2(f"cannot load model {settings.model!r}: {error}")
    _check_storage(settings)

    if settings.workers == 1:
        app = create_app(settings, model=model)
        logger.info("listening on http://%s:%d", settings.host, settings.port)
        # log_config=None keeps the handler configured above; the app logs its own access lines.
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            log_level=settings.log_level.lower(),
        )
    else:
        _run_workers(settings)


def _exit_2(message: str) -> NoReturn:
    print(f"lowrank-server: {message}", file=sys.stderr)
    sys.exit(2)


def _check_storage(settings: Settings) -> None:
    """Exit with status 2 for an invalid keys file or ledger; warn if Redis is unreachable."""
    try:
        KeyRing.from_settings(settings)
    except (KeysFileError, ValueError) as error:
        _exit_2(str(error))
    try:
        # Opening creates the tables once, before several workers would race to.
        Ledger(settings.ledger).close()
    except LedgerError as error:
        _exit_2(str(error))
    if settings.redis_url is not None and not window_storage(settings).check():
        logger.warning(
            "Redis is unreachable at the configured --redis-url; client requests get 503 "
            "limiter_unavailable until it is reachable"
        )


def _run_workers(settings: Settings) -> None:
    """Run ``settings.workers`` uvicorn workers, each building its app from the environment."""
    os.environ[SETTINGS_ENV] = settings.to_worker_env()
    own_metrics_dir = None
    if not os.environ.get(MULTIPROC_DIR_ENV):
        # Each worker writes its metrics here, and /metrics sums them (prometheus-client's
        # multiprocess mode).  The directory must start empty, so each run makes its own.
        own_metrics_dir = tempfile.mkdtemp(prefix="lowrank-metrics-")
        os.environ[MULTIPROC_DIR_ENV] = own_metrics_dir
    logger.info(
        "listening on http://%s:%d with %d workers", settings.host, settings.port, settings.workers
    )
    try:
        uvicorn.run(
            WORKER_APP,
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            log_level=settings.log_level.lower(),
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
