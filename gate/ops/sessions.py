"""Console sessions: the API token exchanged for a cookie, and what a session may do.

``POST /v1/session`` with the API token (compared in constant time) creates a session and
sets its cookie; every ``/v1/`` request may then authenticate with that cookie instead of
``Authorization: Bearer``. Without a token configured (loopback only) sign-in needs none:
the console is as open as the API already is to local users, and no less guarded.

Guarantees:
- The cookie (``COOKIE``) is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (a
  browser never sends it with a request another site starts), ``Path=/``, with the
  session's ``Max-Age``, and ``Secure`` when the request came over HTTPS. Its value is 256
  random bits; the server keeps only its SHA-256.
- CSRF-safe: a request authenticated by the cookie that is not a GET or HEAD must carry
  the session's own ``X-CSRF-Token`` header (a custom header: a cross-site form cannot set
  it, and a cross-site script needs a CORS preflight the gate never answers), on top of
  the API's guard (Host, Origin, ``Sec-Fetch-Site``, JSON or file content types only).
- A session expires ``[console] session`` after sign-in, or ``IDLE_S`` after its last
  request; at most ``MAX_SESSIONS`` live at once (the oldest ends first). Sign-out ends it.
- Failed sign-ins are throttled: past ``MAX_FAILURES`` in ``FAILURE_WINDOW_S`` every sign-in
  is refused (429) until the window passes, and each failure is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "Action",
    "Session",
    "Sessions",
    "SignInRefused",
    "secret_bytes",
]

log = logging.getLogger("callgate.http")

COOKIE = "callgate_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_S = 30 * 60.0
MAX_SESSIONS = 100
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0


class SignInRefused(Exception):
    """A sign-in the gate refuses: ``status`` 401 (wrong token) or 429 (throttled)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Session:
    """One signed-in browser."""

    label: str  # 8 hex digits naming the session in the log and the audit trail
    csrf: str
    created: float  # time.time()
    expires: float  # time.time() of the absolute end
    seen: float = field(default=0.0)  # time.monotonic() of the last request

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)


@dataclass(frozen=True, slots=True)
class Action:
    """A change made through the console, for the audit trail (gate/ops/console.py).

    ``name`` says what was done (``list_add``, ``list_import``, ``consent``…), ``target``
    what it was done to (a list, cool-off rules, a config version), ``numbers`` the
    numbers it was done to as they were given (each gets its own record, naming the
    number as the trail does), ``counts`` what an import counted."""

    name: str
    target: str = ""
    tenant: str = ""
    campaign: str = ""
    numbers: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)


def secret_bytes(value: str) -> bytes:
    """``value`` as bytes to compare in constant time or to hash. Never raises: a header
    whose bytes are not UTF-8 reaches us with lone surrogates (aiohttp decodes them with
    ``surrogateescape``); they are kept as bytes no UTF-8 token equals, so such a value is
    just a wrong credential."""
    return value.encode("utf-8", "surrogatepass")


def _digest(value: str) -> bytes:
    return hashlib.sha256(secret_bytes(value)).digest()


class Sessions:
    """The live sessions of one HTTP listener (in memory: a restart signs everyone out)."""

    def __init__(self, token: str | None, lifetime_s: float, idle_s: float = IDLE_S) -> None:
        self._token = token
        self.lifetime_s = lifetime_s
        self.idle_s = min(idle_s, lifetime_s)
        self._live: OrderedDict[bytes, Session] = OrderedDict()
        self._failures: deque[float] = deque()

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def sign_in(self, given: str, peer: str) -> tuple[str, Session]:
        """A new session for the right token (any, when none is configured): its cookie
        value and the session. ``SignInRefused`` otherwise."""
        now = time.monotonic()
        while self._failures and now - self._failures[0] > FAILURE_WINDOW_S:
            self._failures.popleft()
        if len(self._failures) >= MAX_FAILURES:
            log.warning("console: sign-in from %s refused: too many failed sign-ins", peer)
            raise SignInRefused(429, "too many failed sign-ins; wait a minute before trying again")
        if self._token is not None and not hmac.compare_digest(
            secret_bytes(given), secret_bytes(self._token)
        ):
            self._failures.append(now)
            log.warning("console: failed sign-in from %s (wrong token)", peer)
            raise SignInRefused(401, "wrong token: use the API token ([api] token)")
        value = secrets.token_urlsafe(32)
        wall = time.time()
        session = Session(
            label=secrets.token_hex(4),
            csrf=secrets.token_urlsafe(32),
            created=wall,
            expires=wall + self.lifetime_s,
            seen=now,
        )
        self._live[_digest(value)] = session
        while len(self._live) > MAX_SESSIONS:
            self._live.popitem(last=False)
        log.info("console: session %s signed in from %s", session.label, peer)
        return value, session

    def find(self, value: str | None) -> Session | None:
        """The live session of a cookie value (and it was seen now), else None."""
        if not value:
            return None
        key = _digest(value)
        session = self._live.get(key)
        if session is None:
            return None
        now = time.monotonic()
        if time.time() >= session.expires or now - session.seen >= self.idle_s:
            del self._live[key]
            log.info("console: session %s expired", session.label)
            return None
        session.seen = now
        return session

    def sign_out(self, value: str | None) -> Session | None:
        """End the session of a cookie value; the session it was, if any."""
        session = self._live.pop(_digest(value), None) if value else None
        if session is not None:
            log.info("console: session %s signed out", session.label)
        return session

    def __len__(self) -> int:
        return len(self._live)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            secret_bytes(given), secret_bytes(session.csrf)
        )
