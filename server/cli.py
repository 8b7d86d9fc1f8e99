"""Command line of the model server: ``lowrank-server --model NAME_OR_PATH --api-key KEY ...``.

Keys given with ``--api-key`` and ``--admin-key`` are visible in the process list; prefer
the environment variables ``LOWRANK_API_KEYS`` (comma-separated) and ``LOWRANK_ADMIN_KEY``.
Flags take precedence over the environment.  The server runs one uvicorn worker, because
rate limits, usage and quotas live in process memory.

Exit status 2 means bad arguments, an unknown model name or an invalid model file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from server.app import create_app, load_hosted_model
from server.settings import ADMIN_KEY_ENV, API_KEYS_ENV, Settings

__all__ = ["build_parser", "main", "parse_settings"]

logger = logging.getLogger(__name__)

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
        epilog=f"Keys may also come from {API_KEYS_ENV} (comma-separated) and {ADMIN_KEY_ENV}.",
        argument_default=argparse.SUPPRESS,
    )
    _add_serving_options(parser.add_argument_group("model and network"))
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


def _add_key_options(group: argparse._ArgumentGroup) -> None:
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
    """Parse the arguments, load the model and run the server until interrupted."""
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        model = load_hosted_model(settings.model)
    except (ValueError, OSError) as error:
        print(f"lowrank-server: cannot load model {settings.model!r}: {error}", file=sys.stderr)
        sys.exit(2)

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


if __name__ == "__main__":
    main()
