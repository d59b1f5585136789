"""Decides whether an EC2 Query API request was signed by the holder of an access key's secret.

Three forms are accepted, picked in this order:

1. SigV4 in the ``Authorization`` header (``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
   Signature=...``), dated by ``X-Amz-Date`` or else ``Date``;
2. SigV4 presigned in the query string (``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
   ``X-Amz-SignedHeaders``, ``X-Amz-Signature``, optionally ``X-Amz-Expires``);
3. SigV2 in the decoded request parameters (``SignatureVersion=2`` with ``SignatureMethod``
   ``HmacSHA256`` or ``HmacSHA1``), dated by ``Timestamp`` or bounded by ``Expires``.

Any region and any set of signed headers the client chose are accepted, as long as ``host`` is
among them; the credential scope's service must be the verifier's (``ec2``). SigV4 is checked
against the raw path, raw query and raw body bytes as received: the payload hash is
``X-Amz-Content-SHA256`` when present (and then it must equal sha256 of the body, so a changed
body is caught even though the header was signed), else sha256(body). The clock window is
``max_skew`` seconds either side of ``now``; a presigned request with ``X-Amz-Expires`` stays
valid until its date plus that many seconds (at most seven days), as AWS presigned URLs do.

Refusals are :class:`SignatureError` with ``code`` set to the EC2 error code:
``MissingAuthenticationToken`` (no signature at all), ``IncompleteSignature`` (a part is missing
or malformed), ``AuthFailure`` (unknown access key, unsupported algorithm or version),
``SignatureDoesNotMatch`` and ``RequestExpired``. Messages never contain secrets, signatures or
parameter values. Derived SigV4 signing keys are cached per (secret, date, region, service) in a
bounded :class:`SigningKeyCache` owned by each :class:`Verifier`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar
from urllib.parse import unquote_to_bytes

from botocore.auth import SIGV4_TIMESTAMP
from botocore.utils import normalize_url_path, percent_encode
from multidict import CIMultiDict, CIMultiDictProxy

from broker.errors import Unauthenticated

ErrorCode = Literal[
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "AuthFailure",
    "SignatureDoesNotMatch",
    "RequestExpired",
]

V4_ALGORITHM: Final = "AWS4-HMAC-SHA256"
MAX_PRESIGN_EXPIRES: Final = 7 * 24 * 3600
_V2_DIGESTS: Final = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}
_V2_NAMES: Final = frozenset({"AWSAccessKeyId", "Signature", "SignatureVersion", "SignatureMethod"})
_PRESIGN_NAMES: Final = frozenset({b"X-Amz-Algorithm", b"X-Amz-Credential", b"X-Amz-Signature"})
_BASIC: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)
_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your secret access key and signing method."
)


#: the layout of the Authorization header every SDK writes (others take the general reading)
_AUTHORIZATION: Final = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^\s,=]+), ?SignedHeaders=([^\s,=]+), ?Signature=([^\s,=]+)"
)

K = TypeVar("K")
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """What a pure reading of a text gave, for texts that come back in request after request
    (a client's credential scope, its signed header names); emptied when full."""

    __slots__ = ("_found", "_size")

    def __init__(self, size: int) -> None:
        self._found: dict[K, V] = {}
        self._size = size

    def get(self, text: K) -> V | None:
        return self._found.get(text)

    def put(self, text: K, value: V) -> V:
        if len(self._found) >= self._size:
            self._found.clear()
        self._found[text] = value
        return value


#: credential text -> (access key, date, region, service); signed header text -> their names
_SCOPES: Final[_Memo[str, tuple[str, str, str, str]]] = _Memo(4096)
_SIGNED_NAMES: Final[_Memo[str, tuple[str, ...]]] = _Memo(1024)


class SignatureError(Unauthenticated):
    """The request's signature is missing, malformed, unknown, wrong or outside the clock window."""

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = "AuthFailure",
        resource: str = "",
        field: str = "",
    ) -> None:
        super().__init__(message, resource=resource, field=field)
        self.code: ErrorCode = code


class SignedRequest(NamedTuple):
    """One request as received, nothing decoded or re-encoded.

    ``path`` is the raw path without the query, ``query_string`` the raw text after ``?`` (or
    ``""``), ``headers`` every header line in the order received (pairs, or a mapping such as
    aiohttp's ``CIMultiDictProxy`` whose ``items()`` repeats names), ``body`` the raw bytes.
    (Named tuples, these three: one is made for every request, and a frozen dataclass sets each
    field through ``object.__setattr__``, a microsecond and more each time.)
    """

    method: str
    path: str
    query_string: str
    headers: Sequence[tuple[str, str]] | Mapping[str, str]
    body: bytes = b""


class Verified(NamedTuple):
    """Who signed the request, with which scheme, and the region the SigV4 scope named."""

    access_key: str
    version: Literal["v4", "v2"]
    region: str | None


class _V4Claim(NamedTuple):
    """What a SigV4 request says about itself, before any of it is trusted."""

    access_key: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # the ISO 8601 basic form the client put in its string to sign
    signed_at: datetime
    expires: int | None = None


class KeyedMac:
    """HMAC-SHA256 under one key, its padded key blocks hashed once (RFC 2104): each message then
    costs two copies of a hash state and two updates, about 1 us where ``hmac.digest`` takes 2.3
    (OpenSSL 3 looks the digest up again on every call)."""

    __slots__ = ("_inner", "_outer", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        block = key.ljust(64, b"\0")  # a SigV4 signing key is 32 bytes: never longer than a block
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class SigningKeyCache:
    """Derived SigV4 signing keys, at most ``maxsize``, the least recently used dropped first."""

    __slots__ = ("_keys", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._keys: OrderedDict[tuple[str, str, str, str], KeyedMac] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"SigningKeyCache(size={len(self._keys)}, maxsize={self.maxsize})"

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        """The signing key for this scope: HMAC-SHA256 chained from ``AWS4`` + secret."""
        return self.mac(secret, date, region, service).key

    def mac(self, secret: str, date: str, region: str, service: str) -> KeyedMac:
        """The signing key for this scope, ready to sign with."""
        scope = (secret, date, region, service)
        with self._lock:
            found = self._keys.get(scope)
            if found is not None:
                self._keys.move_to_end(scope)
                return found
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.digest(key, _raw(part), "sha256")
        found = KeyedMac(key)
        if self.maxsize > 0:
            with self._lock:
                self._keys[scope] = found
                while len(self._keys) > self.maxsize:
                    self._keys.popitem(last=False)
        return found


class Verifier:
    """Checks request signatures; create one per app and share it across requests."""

    def __init__(
        self, max_skew: float = 900.0, cache_size: int = 1024, *, service: str = "ec2"
    ) -> None:
        self.max_skew = timedelta(seconds=max_skew)
        self.service = service  # the only service a SigV4 credential scope may name
        self.keys = SigningKeyCache(cache_size)

    def verify(
        self,
        req: SignedRequest,
        params: Mapping[str, str],
        secret_for: Callable[[str], str | None],
        now: datetime,
    ) -> Verified:
        """Return who signed ``req`` or raise :class:`SignatureError`.

        ``params`` are the decoded request parameters the caller will act on (form body for POST,
        query for GET); SigV2 signs exactly those. ``now`` must be timezone-aware.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        headers = _index_headers(req.headers)
        query = _parse_query(req.query_string)
        authorization = headers.get("authorization")
        presigned = any(name in _PRESIGN_NAMES for name, _ in query)
        if authorization is not None:
            if presigned:
                raise _incomplete("Use either the Authorization header or a presigned query.")
            claim = _claim_from_header(_only(authorization, "Authorization"), headers)
        elif presigned:
            claim = _claim_from_query(query)
        elif any(name in params for name in _V2_NAMES):
            return self._verify_v2(req, headers, params, secret_for, now)
        else:
            raise SignatureError(
                "Request is missing Authentication Token", code="MissingAuthenticationToken"
            )
        return self._verify_v4(req, headers, query, claim, secret_for, now)

    def _verify_v4(
        self,
        req: SignedRequest,
        headers: Mapping[str, list[str]],
        query: list[tuple[bytes, bytes]],
        claim: _V4Claim,
        secret_for: Callable[[str], str | None],
        now: datetime,
    ) -> Verified:
        if claim.scope_date != claim.timestamp[:8]:
            raise _incomplete("The credential scope date does not match the request date.")
        if claim.service != self.service:
            raise _incomplete(f"The credential should be scoped to the service '{self.service}'.")
        if "host" not in claim.signed_headers:
            raise _incomplete("The host header must be a signed header.")
        self._check_v4_window(claim, now)
        secret = secret_for(claim.access_key)
        if secret is None:
            raise _unknown_key()
        canonical = "\n".join(
            (
                req.method.upper(),
                _canonical_path(req.path),
                _canonical_query(query),
                _canonical_headers(headers, claim.signed_headers),
                ";".join(claim.signed_headers),
                _payload_hash(headers, req.body),
            )
        )
        scope = "/".join((claim.scope_date, claim.region, claim.service, "aws4_request"))
        to_sign = "\n".join(
            (V4_ALGORITHM, claim.timestamp, scope, hashlib.sha256(_raw(canonical)).hexdigest())
        )
        mac = self.keys.mac(secret, claim.scope_date, claim.region, claim.service)
        expected = mac.hexdigest(_raw(to_sign))
        if not _same(expected, claim.signature):
            raise SignatureError(_MISMATCH, code="SignatureDoesNotMatch")
        return Verified(claim.access_key, "v4", claim.region)

    def _check_v4_window(self, claim: _V4Claim, now: datetime) -> None:
        if claim.expires is None:
            _check_window(claim.signed_at, now, self.max_skew)
        elif claim.signed_at - now > self.max_skew:
            raise _expired(claim.signed_at, now, "is dated in the future")
        elif now > claim.signed_at + timedelta(seconds=claim.expires):
            raise _expired(claim.signed_at, now, f"expired after {claim.expires} seconds")

    def _verify_v2(
        self,
        req: SignedRequest,
        headers: Mapping[str, list[str]],
        params: Mapping[str, str],
        secret_for: Callable[[str], str | None],
        now: datetime,
    ) -> Verified:
        access_key = params.get("AWSAccessKeyId")
        signature = params.get("Signature")
        version = params.get("SignatureVersion")
        method = params.get("SignatureMethod")
        if not access_key or not signature or version is None or method is None:
            raise _incomplete(
                "SigV2 needs AWSAccessKeyId, Signature, SignatureVersion and SignatureMethod."
            )
        if version != "2":
            raise SignatureError("Only SignatureVersion 2 and SigV4 are supported.")
        digest = _V2_DIGESTS.get(method)
        if digest is None:
            raise SignatureError("SignatureMethod must be HmacSHA256 or HmacSHA1.")
        self._check_v2_window(params, now)
        secret = secret_for(access_key)
        if secret is None:
            raise _unknown_key()
        host = _only(headers.get("host", [""]), "Host").lower()
        pairs = sorted(
            (_raw(name), _raw(value)) for name, value in params.items() if name != "Signature"
        )
        query = "&".join(f"{percent_encode(n)}={percent_encode(v)}" for n, v in pairs)
        to_sign = "\n".join((req.method.upper(), host, req.path or "/", query))
        mac = hmac.new(secret.encode(), _raw(to_sign), digest).digest()
        if not _same(base64.b64encode(mac).decode(), signature):
            raise SignatureError(_MISMATCH, code="SignatureDoesNotMatch")
        return Verified(access_key, "v2", None)

    def _check_v2_window(self, params: Mapping[str, str], now: datetime) -> None:
        timestamp = params.get("Timestamp")
        expires = params.get("Expires")
        if timestamp is None and expires is None:
            raise _incomplete("SigV2 needs a Timestamp or an Expires parameter.")
        if timestamp is not None:
            _check_window(_parse_iso(timestamp, "Timestamp"), now, self.max_skew)
        if expires is not None:
            deadline = _parse_iso(expires, "Expires")
            if now > deadline:
                raise _expired(deadline, now, "is past its Expires time")


def _claim_from_header(value: str, headers: Mapping[str, list[str]]) -> _V4Claim:
    """Split ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    parts = _authorization_parts(value)
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        timestamp = _only(amz_date, "X-Amz-Date")
        signed_at = _parse_basic(timestamp, "X-Amz-Date")
    elif "date" in headers:
        signed_at = _parse_http_date(_only(headers["date"], "Date"))
        timestamp = signed_at.strftime(SIGV4_TIMESTAMP)
    else:
        raise _incomplete("The request needs an X-Amz-Date or a Date header.")
    return _claim(
        parts["Credential"], parts["SignedHeaders"], parts["Signature"], timestamp, signed_at
    )


def _authorization_parts(value: str) -> dict[str, str]:
    """``Credential``, ``SignedHeaders`` and ``Signature`` of a SigV4 Authorization header."""
    found = _AUTHORIZATION.fullmatch(value)
    if found is not None:  # the one layout SDKs write: what the loop below reads from it
        return {"Credential": found[1], "SignedHeaders": found[2], "Signature": found[3]}
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != V4_ALGORITHM:
        raise SignatureError("The authorization algorithm is not supported.")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, part = item.strip().partition("=")
        if not eq or name in parts:
            raise _incomplete("The Authorization header is malformed.")
        parts[name] = part
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not parts.get(n)]
    if missing:
        raise _incomplete(f"The Authorization header is missing {', '.join(missing)}.")
    return parts


def _claim_from_query(query: list[tuple[bytes, bytes]]) -> _V4Claim:
    """Read the X-Amz-* authentication parameters of a presigned request."""
    found: dict[str, str] = {}
    for name, value in _text_pairs(query):
        if name.startswith("X-Amz-"):
            if name in found:
                raise _incomplete("An X-Amz- parameter appears more than once in the query.")
            found[name] = value
    if found.get("X-Amz-Algorithm", V4_ALGORITHM) != V4_ALGORITHM:
        raise SignatureError("The X-Amz-Algorithm is not supported.")
    names = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    missing = [n for n in names if not found.get(n)]
    if missing:
        raise _incomplete(f"The presigned query is missing {', '.join(missing)}.")
    expires: int | None = None
    if "X-Amz-Expires" in found:
        text = found["X-Amz-Expires"]
        if not text.isdigit() or int(text) > MAX_PRESIGN_EXPIRES:
            raise _incomplete(f"X-Amz-Expires must be 0 to {MAX_PRESIGN_EXPIRES} seconds.")
        expires = int(text)
    timestamp = found["X-Amz-Date"]
    return _claim(
        found["X-Amz-Credential"],
        found["X-Amz-SignedHeaders"],
        found["X-Amz-Signature"],
        timestamp,
        _parse_basic(timestamp, "X-Amz-Date"),
        expires,
    )


def _claim(
    credential: str,
    signed_headers: str,
    signature: str,
    timestamp: str,
    signed_at: datetime,
    expires: int | None = None,
) -> _V4Claim:
    """Split ``<key>/<date>/<region>/<service>/aws4_request``; a region may hold any characters."""
    scope = _SCOPES.get(credential)
    if scope is None:
        parts = credential.split("/")
        if len(parts) < 5 or not parts[0] or parts[-1] != "aws4_request":
            raise _incomplete(
                "The credential must be <key>/<date>/<region>/<service>/aws4_request."
            )
        scope = _SCOPES.put(credential, (parts[0], parts[1], "/".join(parts[2:-2]), parts[-2]))
    names = _SIGNED_NAMES.get(signed_headers)
    if names is None:
        names = tuple(signed_headers.split(";"))
        if any(not name or name != name.lower() for name in names):
            raise _incomplete("SignedHeaders must be lowercase header names separated by ';'.")
        names = _SIGNED_NAMES.put(signed_headers, names)
    key, date, region, service = scope
    return _V4Claim(key, date, region, service, names, signature, timestamp, signed_at, expires)


def _canonical_path(path: str) -> str:
    """The path normalised and percent-encoded as SigV4 signs it (``/`` as it is)."""
    if path == "/":
        return path
    return str(percent_encode(_raw(normalize_url_path(path)), safe="/~"))


def _canonical_query(query: list[tuple[bytes, bytes]]) -> str:
    """Names and values percent-encoded per RFC 3986, sorted; the signature itself left out."""
    if not query:
        return ""
    pairs = sorted(
        (percent_encode(name), percent_encode(value))
        for name, value in query
        if name != b"X-Amz-Signature"
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def _canonical_headers(headers: Mapping[str, list[str]], names: Sequence[str]) -> str:
    """One ``name:value`` line per signed header, values trimmed with inner spaces collapsed."""
    lines = []
    for name in names:
        values = headers.get(name)
        if values is None:
            raise SignatureError(
                f"The signed header {name} is not in the request.", code="SignatureDoesNotMatch"
            )
        if len(values) == 1:  # the usual case: one line of that name
            lines.append(f"{name}:{' '.join(values[0].split())}\n")
        else:
            lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
    return "".join(lines)


def _payload_hash(headers: Mapping[str, list[str]], body: bytes) -> str:
    """X-Amz-Content-SHA256 when sent (it must describe this body), else sha256 of the body."""
    actual = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared is None:
        return actual
    value = _only(declared, "X-Amz-Content-SHA256")
    if value.lower() != actual and not (value == "UNSIGNED-PAYLOAD" and not body):
        raise SignatureError(
            "The X-Amz-Content-SHA256 header does not match the request body.",
            code="SignatureDoesNotMatch",
        )
    return value


def _index_headers(
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
) -> Mapping[str, list[str]]:
    """Header values by lowercased name, repeats kept in the order received."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return _Caseless(headers)  # aiohttp's headers: looked up as they are
    pairs: Iterable[tuple[str, str]] = headers.items() if isinstance(headers, Mapping) else headers
    index: dict[str, list[str]] = {}
    for name, value in pairs:
        index.setdefault(name.lower(), []).append(value)
    return index


class _Caseless(Mapping[str, list[str]]):
    """A case-insensitive multidict read as :func:`_index_headers` indexes one: each name's
    values in the order received (only the few names a check asks for are ever looked up)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> list[str]:
        return self._headers.getall(name)

    def get(self, name: str, default: object = None) -> Any:
        return self._headers.getall(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._headers))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _parse_query(query_string: str) -> list[tuple[bytes, bytes]]:
    """Decode a raw query to byte pairs (``+`` is a space, as form decoding has it)."""
    pairs: list[tuple[bytes, bytes]] = []
    if not query_string:
        return pairs
    for piece in _raw(query_string).split(b"&"):
        if piece:
            name, _, value = piece.partition(b"=")
            pairs.append(
                (
                    unquote_to_bytes(name.replace(b"+", b" ")),
                    unquote_to_bytes(value.replace(b"+", b" ")),
                )
            )
    return pairs


def _text_pairs(query: list[tuple[bytes, bytes]]) -> Iterable[tuple[str, str]]:
    return ((n.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for n, v in query)


def _only(values: list[str], label: str) -> str:
    if len(values) != 1:
        raise _incomplete(f"The request has more than one {label} header.")
    return values[0]


def _raw(text: str) -> bytes:
    """The bytes ``text`` was decoded from (surrogate escapes restored), as they were signed."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), _raw(given))


def _check_window(signed_at: datetime, now: datetime, skew: timedelta) -> None:
    seconds = int(skew.total_seconds())
    if now - signed_at > skew:
        raise _expired(signed_at, now, f"was signed more than {seconds} seconds ago")
    if signed_at - now > skew:
        raise _expired(signed_at, now, f"is dated more than {seconds} seconds in the future")


def _parse_basic(text: str, label: str) -> datetime:
    """``20261125T134821Z``, the form SigV4 signs (checked by pattern first: ``fromisoformat``
    alone takes forms SigV4 does not; strptime is ten times slower)."""
    try:
        if _BASIC.fullmatch(text) is None:
            raise ValueError(text)
        return datetime.fromisoformat(text)  # the basic form with Z: aware, UTC
    except ValueError:
        raise _incomplete(f"{label} must look like 20261125T134821Z.") from None


def _parse_iso(text: str, label: str) -> datetime:
    """SigV2's ``2026-11-25T13:48:22Z`` (fractions and offsets allowed; no zone means UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _incomplete(
            f"{label} must be an ISO 8601 time such as 2026-11-25T13:48:22Z."
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parse_http_date(text: str) -> datetime:
    """An RFC 7231 ``Date`` header (no zone means UTC)."""
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise _incomplete("The Date header is not an HTTP date.") from None
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _incomplete(message: str) -> SignatureError:
    return SignatureError(message, code="IncompleteSignature")


def _unknown_key() -> SignatureError:
    return SignatureError("The access key could not be validated.", code="AuthFailure")


def _expired(signed_at: datetime, now: datetime, why: str) -> SignatureError:
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return SignatureError(
        f"Request has expired: it {why} (request time {signed_at.astimezone(UTC):{stamp}}, "
        f"server time {now.astimezone(UTC):{stamp}}).",
        code="RequestExpired",
    )
