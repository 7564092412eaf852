"""callgate's one error tree.

Every failure a user or an adapter can meet is one of these; adapters translate the
errors of redis-py and aiohttp at the boundary with ``raise ... from``::

    GateError                      root: anything callgate reports on purpose
    ├── ConfigError                the TOML file or a value in it is wrong (names the key)
    ├── InputError                 a user-supplied value is wrong (CLI argument, import line)
    │   ├── NumberError            a dialled string is not a usable number
    │   ├── ProtectedNumberError   an emergency/protected number may not go on a block list
    │   └── BadRequest             a door's request names an unknown route or parameter, or
    │                              carries a malformed value (gate.core.params; has ``code``)
    ├── StoreError                 Redis could not answer
    │   ├── StoreUnavailable       connection refused/reset, or no server
    │   ├── StoreTimeout           the answer did not come within the deadline
    │   └── NotReplicated          a write that must survive a failover reached the master
    │                              but not enough replicas in time: not acknowledged
    └── AriError                   Asterisk's REST interface refused or failed a request
        ├── AriUnavailable         Asterisk could not be reached (gate.stasis.ari)
        └── AriNotFound            the channel is gone (the caller hung up)

``str(error)`` is always one line meant for a human: what input, what is wrong, what to do.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GateError",
    "InputError",
    "NotReplicated",
    "NumberError",
    "ProtectedNumberError",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
]


class GateError(Exception):
    """Root of every error callgate raises on purpose."""


class ConfigError(GateError):
    """The configuration file or one of its values is invalid."""


class InputError(GateError):
    """A value given by a user (argument, file line) is invalid."""


class NumberError(InputError):
    """A dialled string cannot be turned into a usable E.164 number."""


class ProtectedNumberError(InputError):
    """An emergency or protected number was offered to a block list."""


class StoreError(GateError):
    """The Redis store could not answer."""


class StoreUnavailable(StoreError):
    """Redis refused, reset or never accepted the connection."""


class StoreTimeout(StoreError):
    """Redis did not answer within the configured deadline."""


class NotReplicated(StoreError):
    """A durable write (opt-out, revocation, refusal) reached the master but not enough
    replicas within ``redis.wait_timeout``: it is not acknowledged."""
