"""Fixtures for the operations tests: a real gate on the session Redis, its HTTP listener.

``http_gate`` is a ``Gate`` with BASE_CONFIG (plus a consent list) whose metrics are on;
``served`` starts the real ``HttpServer`` on a free loopback port with ``API_TOKEN`` and
stops it after the test; ``client`` is an aiohttp session for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gate.config.loader import ApiConfig, HttpConfig
from gate.ops.http import HttpServer
from gate.ops.metrics import Metrics
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import BASE_CONFIG, make_config

API_TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
LISTS = [*BASE_CONFIG["lists"], {"name": "consent", "kind": "consent", "scope": "tenant"}]
CLIENT_TIMEOUT_S = 20.0


@dataclass
class Served:
    """A running HTTP listener and what it serves."""

    gate: Gate
    metrics: Metrics
    server: HttpServer
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def get(self, path: str, auth: bool = True) -> tuple[int, Any]:
        headers = AUTH if auth else {}
        async with self.session.get(self.url + path, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def post(self, path: str, body: object, auth: bool = True) -> tuple[int, Any]:
        headers = AUTH if auth else {}
        async with self.session.post(self.url + path, json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``GET /metrics`` parsed: (sample name, labels) → value."""
        async with self.session.get(self.url + "/metrics") as response:
            assert 200 == response.status
            text = await response.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


@pytest.fixture
async def http_gate(redis_url: str) -> AsyncIterator[Gate]:
    """A Gate on the test's Redis, numbers hashed, a 1 s deadline, version v1."""
    store = Store(redis_url, deadline_s=1.0)
    config = make_config({"lists": LISTS})
    yield Gate(config, store, version="v1")
    await store.close()


async def serve(gate: Gate, token: str | None = API_TOKEN, stasis: object = None) -> Served:
    metrics = Metrics()
    metrics.use_config(gate.config, gate.version)
    gate.observers.append(metrics)
    server = HttpServer(
        gate,
        metrics,
        HttpConfig(host="127.0.0.1", port=0),
        ApiConfig(token=token),
        stasis=stasis,  # type: ignore[arg-type]
    )
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))
    return Served(gate, metrics, server, session)


@pytest.fixture
async def served(http_gate: Gate) -> AsyncIterator[Served]:
    """The real HTTP listener for ``http_gate`` on a free port, token ``API_TOKEN``."""
    running = await serve(http_gate)
    yield running
    await running.session.close()
    await running.server.stop()
