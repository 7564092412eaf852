"""Hot reload: re-read the config file and its packs, validate, swap between decisions.

``callgate reload`` (through the admin API) and SIGHUP end up in ``Reloader.reload()``.
Guarantees:
- Nothing changes unless the new file loads and validates whole: a bad file raises
  ``ConfigError`` (logged on one line with ``still serving version …``) and the running
  configuration stays.
- The swap is one assignment in ``Gate.swap``: every decision uses either the old or the
  new configuration, never a mix; decisions in flight are not interrupted.
- Settings bound at start (the Redis connection, the listeners, the ARI link, logging)
  cannot change by reload: a file that changes them is refused with a message naming
  them, so the version shown is always the one in force.
- The version is the first 12 hex digits of SHA-256 over the config file's bytes and the
  bytes of each enabled pack file, so any edit that can change a decision changes it.
- Reloads never overlap: the file is parsed in a thread, one reload at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gate.config.files import PACKS_DIR
from gate.config.loader import Config, load_config
from gate.core.errors import ConfigError, InputError
from gate.core.keys import Keyspace
from gate.service import Gate

__all__ = [
    "ReloadResult",
    "Reloader",
    "config_version",
    "request_reload",
    "restart_only_changes",
]

log = logging.getLogger("callgate")

VERSION_DIGITS = 12


@dataclass(frozen=True, slots=True)
class ReloadResult:
    version: str
    previous: str

    @property
    def changed(self) -> bool:
        return self.version != self.previous


def config_version(path: Path | None) -> str:
    """The short hash of ``path`` and its enabled packs ("" without a file; "?" unreadable)."""
    if path is None:
        return ""
    try:
        raw = path.read_bytes()
        digest = hashlib.sha256(raw)
        gate = tomllib.loads(raw.decode("utf-8")).get("gate", {})
        given = gate.get("packs_dir")
        packs_dir = path.resolve().parent / str(given) if given else PACKS_DIR
        for name in gate.get("packs", []):
            digest.update(b"\0pack\0" + str(name).encode() + b"\0")
            digest.update((packs_dir / f"{name}.toml").read_bytes())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return "?"
    return digest.hexdigest()[:VERSION_DIGITS]


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The settings that differ between ``old`` and ``new`` but only apply at start."""
    pairs: dict[str, tuple[object, object]] = {
        "redis.url": (old.redis.url, new.redis.url),
        "redis.mode": (old.redis.mode, new.redis.mode),
        "redis.nodes": (old.redis.nodes, new.redis.nodes),
        "redis.data_dir": (old.redis.data_dir, new.redis.data_dir),
        "redis.deadline": (old.redis.deadline_s, new.redis.deadline_s),
        # The other connection settings (sentinels, pool, auth, durability).
        "redis": (_connection(old), _connection(new)),
        "agi": (old.agi, new.agi),
        "ari": (old.ari, new.ari),
        "http": (old.http, new.http),
        "api": (old.api, new.api),
        "console": (old.console, new.console),
        "logging": (old.logging, new.logging),
        # The number-hashing keying (privacy.secret, its file, hash_numbers): another one
        # reads and writes other keys than the data's (gate/runtime.py ``check_keying``).
        "privacy": (_keying(old), _keying(new)),
    }
    return [name for name, (before, after) in pairs.items() if before != after]


def _keying(config: Config) -> str:
    secret = config.secret if config.hash_numbers else None
    return Keyspace(config.redis.namespace, secret).fingerprint


def _connection(config: Config) -> object:
    """``[redis]`` without the keys named on their own above (and the namespace, which a
    reload may change)."""
    return dataclasses.replace(
        config.redis,
        url=None,
        mode="",
        nodes=(),
        data_dir=Path(),
        deadline_s=0.0,
        namespace="",
    )


def _load(path: Path) -> tuple[Config, str]:
    """Load ``path`` with its version; the file must not change while it is read."""
    if not path.exists():
        # Not load_config's "pass --config": this gate reads this path until it restarts.
        raise ConfigError(
            f"{path}: no such config file (moved or deleted?); put it back and reload, or "
            "restart callgate with the new path"
        )
    before = config_version(path)
    config = load_config(path)
    if config_version(path) != before:
        raise ConfigError(f"{path}: changed while it was being read; reload again")
    return config, before


class Reloader:
    """Reloads one ``Gate``'s configuration from its file."""

    def __init__(
        self,
        gate: Gate,
        path: Path,
        on_swap: Callable[[Config, str], None] | None = None,
        on_result: Callable[[bool], None] | None = None,
        accept: Callable[[str], None] | None = None,
    ) -> None:
        self.gate = gate
        self.path = path
        self.on_swap = on_swap
        self.on_result = on_result
        # A last say on the version loaded (a worker of ``run --workers``: only the one its
        # parent has in force): ``ConfigError`` refuses it as a bad file would be.
        self.accept = accept
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self) -> ReloadResult:
        """Load, validate and swap; ``ConfigError`` (config unchanged) if anything is wrong."""
        async with self._lock:
            previous = self.gate.version
            try:
                config, version = await asyncio.to_thread(_load, self.path)
                if self.accept is not None:
                    self.accept(version)
                bound = restart_only_changes(self.gate.config, config)
                if bound:
                    raise ConfigError(
                        f"{self.path}: {', '.join(bound)} changed; these apply only at start: "
                        "restart callgate (nothing was reloaded)"
                    )
            except ConfigError as exc:
                log.warning("reload refused, still serving config version %s: %s", previous, exc)
                if self.on_result is not None:
                    self.on_result(False)
                raise
            self.gate.swap(config, version)
            if self.on_swap is not None:
                self.on_swap(config, version)
            if self.on_result is not None:
                self.on_result(True)
        if version == previous:
            log.info("reloaded %s: config version %s (unchanged)", self.path, version)
        else:
            log.info("reloaded %s: config version %s (was %s)", self.path, version, previous)
        return ReloadResult(version, previous)

    def request(self) -> None:
        """Reload in the background (the SIGHUP handler); the outcome is logged."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # already logged by reload()
        except Exception:  # a bug in a reload must not take the gate down
            log.exception("reload failed")

    async def close(self) -> None:
        """Wait for background reloads to finish (each is bounded by reading two files)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def request_reload(config: Config, timeout_s: float = 30.0) -> ReloadResult:
    """``callgate reload``: ask the gate serving ``config``'s ``[http]`` to reload.

    Raises ``InputError`` if no gate answers there, ``ConfigError`` if it refused the file.
    """
    import aiohttp  # only this command needs an HTTP client

    http = config.http
    if not http.enabled:
        raise InputError(
            "[http] is disabled, so callgate reload cannot reach the gate; send it SIGHUP "
            "instead (systemctl reload callgate, or kill -HUP PID)"
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{http.port}/v1/reload"
    headers = {"Authorization": f"Bearer {config.api.token}"} if config.api.token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, headers=headers, json={}) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"no callgate answered at {url} ({exc}); is `callgate run` running?"
        ) from exc
    if response.status == 422:
        raise ConfigError(str(body.get("error", body)))
    if response.status != 200:
        raise InputError(f"{url} answered {response.status}: {body.get('error', body)}")
    return ReloadResult(str(body["config_version"]), str(body["previous"]))
