"""Who the caller is and what they may do: secrets at rest, access keys, tokens, authorization.

Secrets that signature checks need (EC2 secret keys) and target credentials are stored encrypted
with Fernet under a key file the broker creates in its data dir on first start. Tokens are stored
only as SHA-256 digests. :func:`authorize` is the one function every frontend and the admin API
call to decide whether a caller may act on a resource, so a rule cannot differ between them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import string
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from broker.errors import Forbidden, NotFound

ROLES = ("admin", "groupadmin", "user")


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated principal, as every service function receives it."""

    user_id: str
    name: str
    group_id: str
    role: str = "user"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


#: The broker itself (scheduler, monitor): may do anything, owns nothing.
SYSTEM = Caller(user_id="", name="system", group_id="", role="admin")


class SecretBox:
    """Encrypts and decrypts secrets at rest with a key file (created 0600 on first use)."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            key = Fernet.generate_key()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key + b"\n")
        return cls(key)

    def seal(self, plain: str) -> bytes:
        return self._fernet.encrypt(plain.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise Forbidden("a stored secret cannot be decrypted with this broker's key") from None


_KEY_ALPHABET = string.ascii_uppercase + string.digits


def new_access_key() -> str:
    return "AKCB" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


def new_secret_key() -> str:
    return secrets.token_urlsafe(30)[:40]


def new_token() -> str:
    return "cbt_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns a resource and how widely it is shared."""

    owner_id: str | None
    group_id: str | None
    visibility: str = "private"  # private | group | public
    grantees: frozenset[str] = frozenset()


def can_see(caller: Caller, res: Ownership) -> bool:
    if caller.is_admin or res.owner_id == caller.user_id:
        return True
    if res.visibility == "public" or "all" in res.grantees:
        return True
    if caller.user_id in res.grantees or caller.group_id in res.grantees:
        return True
    if res.group_id is not None and res.group_id == caller.group_id:
        return res.visibility == "group" or caller.role == "groupadmin"
    return False


def can_change(caller: Caller, res: Ownership) -> bool:
    if caller.is_admin or res.owner_id == caller.user_id:
        return True
    return caller.role == "groupadmin" and res.group_id == caller.group_id


def authorize(caller: Caller, res: Ownership, *, change: bool, what: str, rid: str) -> None:
    """Raise unless ``caller`` may see (or, with ``change``, act on) the resource.

    A resource the caller may not even see is reported as not found, exactly as a missing one,
    so ids of other tenants leak nothing. One they may see but not change is Forbidden.
    """
    if not can_see(caller, res):
        raise NotFound(f"the {what} '{rid}' does not exist", resource=what, field=rid)
    if change and not can_change(caller, res):
        raise Forbidden(f"you are not allowed to change the {what} '{rid}'", resource=what)


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("this operation needs the admin role")
