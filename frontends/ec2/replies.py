"""Answers served again while the database is unchanged.

Decides which EC2 answers may be reused and for how long. Clients poll: boto3's waiters and
euca2ools' ``--wait`` send the same DescribeInstances again and again until something changes.
An answer is kept per caller, request (its parameters and API version, without what signs
it) and host, labelled with the database's version read before the answer's reads
(:meth:`broker.db.Reads.version`); it is served again only while that version still holds,
so any commit anywhere (a launch, a state change, another process) makes every kept answer
stale at once. Each reuse still passes the signature check and the rate limit, and gets its
own request id. Where the database has no such version (PostgreSQL), nothing is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.auth import Caller
from frontends.kept import Kept, Version

#: actions whose answer depends only on what the database holds and the request itself
REUSABLE = frozenset({"DescribeInstances"})
#: parameters that sign or date a request (query-string auth), not part of what it asks
_SIGNING = frozenset(
    {
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "Timestamp",
        "Expires",
        "AWSAccessKeyId",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)

Key = tuple[Caller, str, frozenset[tuple[str, str]]]


class Replies:
    """Kept answers, each split around its request id (see :mod:`frontends.kept`)."""

    __slots__ = ("_kept",)

    def __init__(self, size: int = 1024) -> None:
        self._kept: Kept[tuple[bytes, bytes]] = Kept(size)

    def __len__(self) -> int:
        return len(self._kept)

    @staticmethod
    def key(caller: Caller, host: str, params: Mapping[str, str]) -> Key:
        if _SIGNING.isdisjoint(params):  # signed in a header, as SDKs do: all of it is asked
            return caller, host, frozenset(params.items())
        asked = frozenset((k, v) for k, v in params.items() if k not in _SIGNING)
        return caller, host, asked

    def get(self, key: Key, version: Version | None, request_id: str) -> bytes | None:
        """The kept answer to ``key`` with ``request_id`` in it, if made at ``version``."""
        hit = self._kept.get(key, version)
        return None if hit is None else hit[0] + request_id.encode() + hit[1]

    def keep(self, key: Key, version: Version | None, body: bytes, request_id: str) -> None:
        """Keep ``body`` (which carries ``request_id`` once) as the answer at ``version``."""
        head, found, tail = body.partition(request_id.encode())
        if found and request_id.encode() not in tail:
            self._kept.keep(key, version, (head, tail))
