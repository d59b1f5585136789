"""Sign-in sessions: an HttpOnly, SameSite=Strict cookie naming a server-side session.

The cookie carries a random session id and an HMAC of it under a key made at random when the
web app is built, so a forged or edited cookie is refused before any lookup and a restart signs
everyone out. Each session has its own CSRF token, which every POST form must send back.
Sessions live in the app's :class:`Sessions` (never in module state) and expire after ``ttl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time

from broker.auth import Caller

COOKIE = "cb_session"
FAILURES_ALLOWED = 10  # failed sign-ins per client address ...
FAILURE_WINDOW = 60.0  # ... within this many seconds
TTL = 12 * 3600.0
MAX_SESSIONS = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    sid: str
    caller: Caller
    csrf: str
    expires: float


class Sessions:
    """The signed-in users of one web app."""

    def __init__(self, key: bytes | None = None, ttl: float = TTL) -> None:
        self._key = key or secrets.token_bytes(32)
        self._ttl = ttl
        self._items: dict[str, Session] = {}

    def _sign(self, sid: str) -> str:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def create(self, caller: Caller) -> tuple[str, Session]:
        """A new session for ``caller`` and the cookie value that names it."""
        now = time.monotonic()
        if len(self._items) >= MAX_SESSIONS:
            self._items = {k: v for k, v in self._items.items() if v.expires > now}
            if len(self._items) >= MAX_SESSIONS:
                self._items.clear()
        sid = secrets.token_urlsafe(24)
        session = Session(sid, caller, secrets.token_urlsafe(24), now + self._ttl)
        self._items[sid] = session
        return f"{sid}.{self._sign(sid)}", session

    def lookup(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 200:
            return None
        sid, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._sign(sid).encode()):
            return None
        session = self._items.get(sid)
        if session is None or session.expires < time.monotonic():
            self._items.pop(sid, None)
            return None
        return session

    def refresh(self, session: Session, caller: Caller | None) -> Session | None:
        """Keep the session with the caller as it is now, or end it (``caller`` None)."""
        if caller is None:
            self._items.pop(session.sid, None)
            return None
        if caller != session.caller:
            session = dataclasses.replace(session, caller=caller)
            self._items[session.sid] = session
        return session

    def drop(self, cookie: str | None) -> None:
        found = self.lookup(cookie)
        if found is not None:
            self._items.pop(found.sid, None)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


class Throttle:
    """Counts failed sign-ins per client address; too many in a window refuse further tries."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW) -> None:
        self._allowed = allowed
        self._window = window
        self._failures: dict[str, list[float]] = {}

    def _recent(self, client: str) -> list[float]:
        now = time.monotonic()
        kept = [t for t in self._failures.get(client, []) if t > now - self._window]
        if kept:
            self._failures[client] = kept
        else:
            self._failures.pop(client, None)
        return kept

    def blocked(self, client: str) -> bool:
        return len(self._recent(client)) >= self._allowed

    def failed(self, client: str) -> None:
        if len(self._failures) >= MAX_SESSIONS:
            self._failures.clear()
        self._recent(client)
        self._failures.setdefault(client, []).append(time.monotonic())
