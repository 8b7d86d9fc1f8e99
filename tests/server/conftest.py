"""Fixtures for the server tests: a hand-sized HMM, a fake clock, and an app client factory.

The HMM starts in hidden state 0, which never emits token 2, so the prompt ``[2]`` has
probability zero.  Its first-token law is ``(0.8, 0.2, 0)``; after the prompt ``[1]`` the
next-token law is ``0.5 * (0.8, 0.2, 0) + 0.5 * (0, 0.3, 0.7) = (0.4, 0.25, 0.35)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings
from shared.automaton import HMM

API_KEY = "client-key-0001"
OTHER_KEY = "client-key-0002"
ADMIN_KEY = "admin-key-0001"
HORIZON = 6


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SeededRngFactory:
    """Give ``default_rng(seed)`` for a seed, and a new generator from a fixed stream otherwise."""

    def __init__(self, root_seed: int = 20240601) -> None:
        self._fresh = np.random.SeedSequence(root_seed)

    def __call__(self, seed: int | None) -> np.random.Generator:
        if seed is not None:
            return np.random.default_rng(seed)
        return np.random.default_rng(self._fresh.spawn(1)[0])


class Keys:
    """The test keys and their ``Authorization`` headers."""

    client = API_KEY
    other = OTHER_KEY
    admin = ADMIN_KEY

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        """Return the Authorization header for ``key``."""
        return {"Authorization": f"Bearer {key}"}


def make_hmm() -> HMM:
    """Return the hand-sized HMM described in the module docstring."""
    pi = np.array([1.0, 0.0])
    T = np.array([[0.5, 0.5], [0.0, 1.0]])  # noqa: N806 - HMM notation
    O = np.array([[0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])  # noqa: E741, N806 - HMM notation
    return HMM(["a", "b", "c"], HORIZON, pi, T, O)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def model() -> HMM:
    return make_hmm()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> type[Keys]:
    return Keys


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Return :func:`settings_for`."""
    return settings_for


def settings_for(**overrides: Any) -> Settings:
    """Return test settings with two client keys and an admin key, updated by ``overrides``."""
    values: dict[str, Any] = {
        "model": "test-hmm",
        "api_keys": (API_KEY, OTHER_KEY),
        "admin_key": ADMIN_KEY,
    }
    values.update(overrides)
    return Settings(**values)


ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client(model: HMM, clock: FakeClock) -> ClientFactory:
    """Return a factory: ``async with make_client(**settings) as client`` over a fresh app."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = build_app(model, clock, **overrides)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client

    return factory


def build_app(model: HMM, clock: FakeClock, **overrides: Any) -> FastAPI:
    """Return an app over ``model`` with the fake clock and seeded randomness."""
    return create_app(
        settings_for(**overrides), model=model, clock=clock, rng_factory=SeededRngFactory()
    )


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client
