"""callgate's one error tree.

Every failure a user or an adapter can meet is one of these; adapters translate the
errors of redis-py and aiohttp at the boundary with ``raise ... from``::

    GateError                      root: anything callgate reports on purpose
    ├── ConfigError                the TOML file or a value in it is wrong (names the key)
    ├── InputError                 a user-supplied value is wrong (CLI argument, import line)
    │   ├── OptionError            an option of the interface is missing or wrong, named as
    │   │                          that interface names it (``worded``: CLI, API, console)
    │   ├── NumberError            a dialled string is not a usable number
    │   ├── ProtectedNumberError   an emergency/protected number may not go on a block list
    │   ├── OutputError            a file written beside the work (``--rejects``) could not
    │   │                          be: its message says what became of the work
    │   └── BadRequest             a door's request names an unknown route or parameter, or
    │                              carries a malformed value (gate.core.params; has ``code``)
    ├── StoreError                 Redis could not answer
    │   ├── StoreUnavailable       connection refused/reset, or no server
    │   ├── StoreTimeout           the answer did not come within the deadline
    │   └── NotReplicated          a write that must survive a failover reached the master
    │                              but not enough replicas in time: not acknowledged
    ├── WorkerError                a helper process (an import's worker) ended before it
    │                              answered: killed (out of memory, a signal)
    └── AriError                   Asterisk's REST interface refused or failed a request
        ├── AriUnavailable         Asterisk could not be reached (gate.stasis.ari)
        └── AriNotFound            the channel is gone (the caller hung up)

``str(error)`` is always one line meant for a human: what input, what is wrong, what to do.
An error raised by code every interface shares names an option through ``OptionError``:
each interface says it with ``error.worded(its_wording)`` (the CLI "pass --campaign", the
API "give the campaign parameter", the console "fill in Campaign"); ``worded`` of any other
error is ``str(error)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "GateError",
    "InputError",
    "NotReplicated",
    "NumberError",
    "OptionError",
    "OutputError",
    "ProtectedNumberError",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "Term",
    "Wording",
    "WorkerError",
]


@dataclass(frozen=True, slots=True)
class Term:
    """How one interface names an option (``name``: "--campaign", "campaign", "Campaign")
    and asks for it (``ask``: "pass --campaign"). Either may use the error's values
    (``{list}``)."""

    name: str
    ask: str


# An interface's terms, by option key ("campaign", "keep", "allow_empty"…).
Wording = Mapping[str, Term]


class GateError(Exception):
    """Root of every error callgate raises on purpose."""

    def worded(self, wording: Wording) -> str:
        """The message as the interface of ``wording`` says it (``str(self)``: it names no
        option of an interface)."""
        return str(self)


class ConfigError(GateError):
    """The configuration file or one of its values is invalid."""


class InputError(GateError):
    """A value given by a user (argument, file line) is invalid."""


class _Said:
    """An option in a message: ``{key}`` is its name, ``{key:ask}`` the request for it."""

    __slots__ = ("term", "values")

    def __init__(self, term: Term, values: Mapping[str, object]) -> None:
        self.term, self.values = term, values

    def __format__(self, spec: str) -> str:
        if spec not in ("", "ask"):
            raise ValueError(f"an option is formatted as {{key}} or {{key:ask}}, not {spec!r}")
        return (self.term.ask if spec == "ask" else self.term.name).format_map(self.values)


class _Fields(dict[str, object]):
    """The fields of an ``OptionError`` template: its values, and its options as
    ``wording`` names them (an option it lacks is named by its key, and recorded)."""

    def __init__(self, values: Mapping[str, object], wording: Wording) -> None:
        super().__init__(values)
        self.wording = wording
        self.options: list[str] = []

    def __missing__(self, key: str) -> _Said:
        self.options.append(key)
        term = self.wording.get(key) or Term(key.replace("_", " "), f"give {key}")
        return _Said(term, self)


class OutputError(InputError):
    """A file a command writes beside its work (an import's ``--rejects``) could not be
    written: its message already says what became of the work, so the layers it passes
    through (an import stopped: "the list unchanged") do not say it again."""


class OptionError(InputError):
    """A bad input whose message names options of the interface it is read in.

    ``template`` is a ``str.format`` string: a field named in ``values`` is data (a list's
    name, a value given); any other is an option (``{campaign}`` its name, ``{campaign:ask}``
    the request to give it), said in each interface's words by ``worded``. ``str()`` names
    the options by their keys (a log line)."""

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        super().__init__(self.worded({}))

    @property
    def options(self) -> tuple[str, ...]:
        """The keys of the options the message names, in order."""
        fields = _Fields(self.values, {})
        self.template.format_map(fields)
        return tuple(fields.options)

    def worded(self, wording: Wording) -> str:
        return self.template.format_map(_Fields(self.values, wording))

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuilt from its template and values (copy, deepcopy, pickle: a worker process's
        error), not from its message as an exception is: read as a template, a message
        whose values hold braces (a list named ``{x}``) would name an option ``x``, or
        fail. The instance's other attributes (``__notes__``…) follow as its state."""
        return (_option_error, (type(self), self.template, self.values), self.__dict__)


def _option_error(
    cls: type[OptionError], template: str, values: Mapping[str, object]
) -> OptionError:
    """``cls(template, **values)``: how ``OptionError.__reduce__`` rebuilds one."""
    return cls(template, **values)


class NumberError(InputError):
    """A dialled string cannot be turned into a usable E.164 number."""


class ProtectedNumberError(InputError):
    """An emergency or protected number was offered to a block list."""


class StoreError(GateError):
    """The Redis store could not answer."""

    # Set on the error of a list update cut off after some of its batches went in: how
    # many entries were confirmed (the cause: the store's own error).
    confirmed: int | None = None


class StoreUnavailable(StoreError):
    """Redis refused, reset or never accepted the connection."""


class StoreTimeout(StoreError):
    """Redis did not answer within the configured deadline."""


class WorkerError(GateError):
    """A helper process (an import's worker) ended before it answered: killed by the
    kernel's out-of-memory killer or a signal, not a bug of the input."""


class NotReplicated(StoreError):
    """A durable write (opt-out, revocation, refusal) reached the master but not enough
    replicas within ``redis.wait_timeout``: it is not acknowledged."""
