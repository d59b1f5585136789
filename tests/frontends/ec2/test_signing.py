"""Signature checks on captured boto3 and euca2ools traffic and on requests botocore signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from botocore.auth import SigV2Auth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from broker.errors import BrokerError, Unauthenticated
from frontends.ec2.signing import (
    SignatureError,
    SignedRequest,
    SigningKeyCache,
    Verified,
    Verifier,
    _index_headers,
)

KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FORM = "application/x-www-form-urlencoded"


def _fixture_dir() -> Path:
    candidates = [
        os.environ.get("EC2_WIRE_FIXTURES", ""),
        str(Path(__file__).resolve().parents[2] / "fixtures" / "ec2-wire"),
        "/work/shared/fixtures/ec2-wire",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "boto3.json").is_file():
            return Path(candidate)
    raise FileNotFoundError("ec2-wire fixtures not found; set EC2_WIRE_FIXTURES")


def _load() -> list[dict[str, Any]]:
    records = []
    for client in ("boto3", "euca2ools"):
        for index, record in enumerate(json.loads((_fixture_dir() / f"{client}.json").read_text())):
            record["id"] = f"{client}-{index:02d}-{record['action']}-{record['signature_version']}"
            records.append(record)
    return records


RECORDS = _load()


def _ids(record: dict[str, Any]) -> str:
    return str(record["id"])


# ---------------------------------------------------------------- helpers for recorded traffic


def _request(
    record: dict[str, Any],
    *,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> SignedRequest:
    path, _, query = record["path"].partition("?")
    return SignedRequest(
        method=record["method"],
        path=path,
        query_string=query,
        headers=headers if headers is not None else [(n, v) for n, v in record["headers"]],
        body=body if body is not None else record["body"].encode("utf-8"),
    )


def _params(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def _signed_at(record: dict[str, Any]) -> datetime:
    stamp = record["signed_at"]
    if record["signature_version"] == "v4":
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return datetime.fromisoformat(stamp)


def _secrets(access_key: str, secret: str) -> Callable[[str], str | None]:
    return {access_key: secret}.get


def _verify(
    record: dict[str, Any],
    *,
    req: SignedRequest | None = None,
    secret: str | None = None,
    now: datetime | None = None,
    verifier: Verifier | None = None,
) -> Verified:
    req = req or _request(record)
    return (verifier or Verifier()).verify(
        req,
        _params(req.body),
        _secrets(record["access_key"], secret or record["secret_key"]),
        now or _signed_at(record),
    )


def _signature_of(record: dict[str, Any]) -> str:
    if record["signature_version"] == "v2":
        return _params(record["body"].encode())["Signature"]
    authorization = dict((n.lower(), v) for n, v in record["headers"])["authorization"]
    return str(authorization.rsplit("Signature=", 1)[1])


def _refused(code: str, call: Callable[[], object], *secrets: str) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        call()
    assert caught.value.code == code, str(caught.value)
    for secret in secrets:
        assert secret not in str(caught.value)
    return caught.value


def _signed_headers(record: dict[str, Any]) -> list[str]:
    if record["signature_version"] == "v2":
        return ["host"]
    authorization = dict((n.lower(), v) for n, v in record["headers"])["authorization"]
    return str(authorization.split("SignedHeaders=")[1].split(",")[0]).split(";")


def _tamper(value: str) -> str:
    """Change the last digit (so dates and lengths stay well formed), else append a letter."""
    for index in range(len(value) - 1, -1, -1):
        if value[index].isdigit():
            return value[:index] + str((int(value[index]) + 1) % 10) + value[index + 1 :]
    return value + "x"


def _with_header(record: dict[str, Any], name: str, change: Callable[[str], str]) -> SignedRequest:
    headers = [(n, change(v) if n.lower() == name else v) for n, v in record["headers"]]
    return _request(record, headers=headers)


def _without_header(record: dict[str, Any], name: str) -> SignedRequest:
    return _request(record, headers=[(n, v) for n, v in record["headers"] if n.lower() != name])


def _with_authorization(record: dict[str, Any], change: Callable[[str], str]) -> SignedRequest:
    return _with_header(record, "authorization", change)


V4_RECORDS = [r for r in RECORDS if r["signature_version"] == "v4"]
V2_RECORDS = [r for r in RECORDS if r["signature_version"] == "v2"]
SIGNED_HEADER_CASES = [
    pytest.param(record, name, id=f"{record['id']}-{name}")
    for record in RECORDS
    for name in _signed_headers(record)
]


# ---------------------------------------------------------------- recorded traffic


def test_fixture_counts() -> None:
    assert len([r for r in RECORDS if r["client"] == "boto3"]) == 22
    assert len([r for r in RECORDS if r["client"] == "euca2ools"]) == 52
    assert len(V2_RECORDS) == 9


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_recorded_params_are_the_decoded_body(record: dict[str, Any]) -> None:
    body = record["body"].encode("utf-8")
    assert parse_qsl(body.decode(), keep_blank_values=True) == [tuple(p) for p in record["params"]]


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_recorded_request_verifies(record: dict[str, Any]) -> None:
    verified = _verify(record)
    region = record["region_signed"] if record["signature_version"] == "v4" else None
    assert verified == Verified(record["access_key"], record["signature_version"], region)


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_recorded_request_verifies_with_multidict_headers(record: dict[str, Any]) -> None:
    headers = CIMultiDict((n, v) for n, v in record["headers"])
    req = SignedRequest(record["method"], record["path"], "", headers, record["body"].encode())
    assert _verify(record, req=req).access_key == record["access_key"]


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_tampered_body_byte_is_refused(record: dict[str, Any]) -> None:
    body = bytearray(record["body"].encode("utf-8"))
    at = body.index(b"Version=") + len("Version=")
    body[at] = ord("3") if body[at] != ord("3") else ord("4")
    req = _request(record, body=bytes(body))
    _refused("SignatureDoesNotMatch", lambda: _verify(record, req=req), SECRET)


@pytest.mark.parametrize(("record", "name"), SIGNED_HEADER_CASES)
def test_tampered_signed_header_is_refused(record: dict[str, Any], name: str) -> None:
    req = _with_header(record, name, _tamper)
    _refused("SignatureDoesNotMatch", lambda: _verify(record, req=req), SECRET)


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_unsigned_header_may_change(record: dict[str, Any]) -> None:
    assert "user-agent" not in _signed_headers(record)
    assert _verify(record, req=_with_header(record, "user-agent", _tamper))


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_wrong_secret_is_refused(record: dict[str, Any]) -> None:
    wrong = SECRET[:-1] + "Z"
    _refused(
        "SignatureDoesNotMatch",
        lambda: _verify(record, secret=wrong),
        SECRET,
        wrong,
        _signature_of(record),
    )


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_unknown_key_is_refused(record: dict[str, Any]) -> None:
    req = _request(record)
    error = _refused(
        "AuthFailure",
        lambda: Verifier().verify(
            req, _params(req.body), _secrets("AKIDOTHER", SECRET), _signed_at(record)
        ),
        SECRET,
    )
    assert isinstance(error, Unauthenticated)


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
@pytest.mark.parametrize("minutes", [16, -16])
def test_outside_the_clock_window_is_refused(record: dict[str, Any], minutes: int) -> None:
    now = _signed_at(record) + timedelta(minutes=minutes)
    error = _refused("RequestExpired", lambda: _verify(record, now=now), SECRET)
    assert "expired" in error.message


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
@pytest.mark.parametrize("minutes", [15, -15])
def test_at_the_edge_of_the_clock_window_verifies(record: dict[str, Any], minutes: int) -> None:
    assert _verify(record, now=_signed_at(record) + timedelta(minutes=minutes))


def test_a_narrower_window_is_honoured() -> None:
    record = V4_RECORDS[0]
    now = _signed_at(record) + timedelta(seconds=61)
    _refused("RequestExpired", lambda: _verify(record, now=now, verifier=Verifier(max_skew=60)))


@pytest.mark.parametrize("record", V4_RECORDS[:3] + V4_RECORDS[-3:], ids=_ids)
def test_no_authorization_at_all(record: dict[str, Any]) -> None:
    req = _without_header(record, "authorization")
    _refused("MissingAuthenticationToken", lambda: _verify(record, req=req))


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.split(", Signature=")[0],
        lambda a: a.replace("SignedHeaders=", "Headers="),
        lambda a: a.replace("Credential=AKIDEXAMPLE/", "Credential="),
        lambda a: a.replace("/aws4_request", "/aws5_request"),
        lambda a: a.replace("Credential=AKIDEXAMPLE/20261125/", "Credential=AKIDEXAMPLE/20261124/"),
        lambda a: a.replace("/ec2/", "/s3/"),
        lambda a: a.replace("SignedHeaders=", "SignedHeaders=Accept;"),
        lambda a: a.replace("host;", ""),
        lambda a: a + ", Signature=00",
        lambda a: a.replace(", ", " "),
    ],
    ids=[
        "no-signature",
        "no-signed-headers",
        "short-credential",
        "bad-terminator",
        "scope-date-differs",
        "other-service",
        "uppercase-header-name",
        "host-not-signed",
        "repeated-part",
        "no-commas",
    ],
)
@pytest.mark.parametrize("record", [V4_RECORDS[0], V4_RECORDS[-1]], ids=_ids)
def test_malformed_authorization(record: dict[str, Any], change: Callable[[str], str]) -> None:
    req = _with_authorization(record, change)
    _refused("IncompleteSignature", lambda: _verify(record, req=req), SECRET)


@pytest.mark.parametrize("record", [V4_RECORDS[0], V4_RECORDS[-1]], ids=_ids)
def test_unsupported_algorithm(record: dict[str, Any]) -> None:
    req = _with_authorization(
        record, lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")
    )
    _refused("AuthFailure", lambda: _verify(record, req=req))
    req = _with_authorization(record, lambda a: f"AWS {KEY}:c2lnbmF0dXJl")
    _refused("AuthFailure", lambda: _verify(record, req=req))


@pytest.mark.parametrize("record", [V4_RECORDS[0], V4_RECORDS[-1]], ids=_ids)
def test_missing_date_header(record: dict[str, Any]) -> None:
    req = _without_header(record, "x-amz-date")
    _refused("IncompleteSignature", lambda: _verify(record, req=req))


def test_repeated_date_header() -> None:
    record = V4_RECORDS[0]
    headers = [(n, v) for n, v in record["headers"]] + [("X-Amz-Date", record["signed_at"])]
    _refused("IncompleteSignature", lambda: _verify(record, req=_request(record, headers=headers)))


def test_signed_header_absent_from_request() -> None:
    record = next(r for r in V4_RECORDS if "accept" in _signed_headers(r))
    _refused(
        "SignatureDoesNotMatch", lambda: _verify(record, req=_without_header(record, "accept"))
    )


def test_header_and_presigned_query_together() -> None:
    record = V4_RECORDS[0]
    req = _request(record)
    req = SignedRequest(req.method, req.path, "X-Amz-Signature=00", req.headers, req.body)
    _refused("IncompleteSignature", lambda: _verify(record, req=req))


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("SignatureVersion", "1", "AuthFailure"),
        ("SignatureMethod", "HmacMD5", "AuthFailure"),
        ("Timestamp", "yesterday", "IncompleteSignature"),
        ("AWSAccessKeyId", "", "IncompleteSignature"),
        ("Signature", "", "IncompleteSignature"),
        ("SignatureMethod", None, "IncompleteSignature"),
        ("Timestamp", None, "IncompleteSignature"),
    ],
)
def test_malformed_v2(name: str, value: str | None, code: str) -> None:
    record = V2_RECORDS[0]
    req = _request(record)
    params = _params(req.body)
    if value is None:
        del params[name]
    else:
        params[name] = value
    now = _signed_at(record)
    _refused(code, lambda: Verifier().verify(req, params, _secrets(KEY, SECRET), now), SECRET)


def test_naive_now_is_a_programming_error() -> None:
    record = RECORDS[0]
    with pytest.raises(ValueError, match="timezone"):
        _verify(record, now=_signed_at(record).replace(tzinfo=None))


def test_signature_error_keeps_the_broker_error_shape() -> None:
    error = SignatureError("nope", code="RequestExpired", resource="request", field="X-Amz-Date")
    assert isinstance(error, BrokerError)
    assert (error.message, error.code, error.resource, error.field) == (
        "nope",
        "RequestExpired",
        "request",
        "X-Amz-Date",
    )
    assert SignatureError("nope").code == "AuthFailure"


# ---------------------------------------------------------------- fresh requests signed by botocore

CREDS = Credentials(KEY, SECRET)
TRICKY = {
    "Action": "DescribeInstances",
    "Version": "2016-11-15",
    "Filter.1.Name": "tag:Name",
    "Filter.1.Value.1": "a b/c+d=e&f~g*h%20 ☃",
    "Filter.2.Name": "",
    "MaxResults": "5",
}
REGIONS = [
    "us-east-1",
    "RegionOne",
    "eucalyptus",
    "us-gov-west-1",
    "cn-northwest-1",
    "local",
    "dc_7.rack-2",
    "Region With Spaces",
    "région-1",
    "zone/with/slashes",
]
URLS = [
    "https://ec2.example.test:8773/services/compute/",
    "http://127.0.0.1:5111/",
    "https://ec2.example.test/",
]


def _sent(request: AWSRequest) -> SignedRequest:
    """What the server receives: the prepared URL split, the headers plus Host, the raw body."""
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers = [("Host", url.netloc), *prepared.headers.items()]
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return SignedRequest(prepared.method, url.path, url.query, headers, body)


def _pairs(req: SignedRequest) -> list[tuple[str, str]]:
    assert isinstance(req.headers, list)
    return req.headers


def _parsed(req: SignedRequest) -> dict[str, str]:
    text = req.body.decode() if req.body else req.query_string
    return dict(parse_qsl(text, keep_blank_values=True))


def _check(
    req: SignedRequest,
    *,
    now: datetime | None = None,
    verifier: Verifier | None = None,
    secret: str = SECRET,
) -> Verified:
    return (verifier or Verifier()).verify(
        req, _parsed(req), _secrets(KEY, secret), now or datetime.now(UTC)
    )


def _v4(method: str, url: str, region: str = "us-east-1", **kwargs: Any) -> SignedRequest:
    request = AWSRequest(method=method, url=url, **kwargs)
    SigV4Auth(CREDS, "ec2", region).add_auth(request)
    return _sent(request)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("url", URLS)
def test_botocore_v4_get_with_query(url: str, region: str) -> None:
    req = _v4("GET", url, region, params=TRICKY)
    assert req.body == b""
    assert "%E2%98%83" in req.query_string
    assert _check(req) == Verified(KEY, "v4", region)
    _refused("SignatureDoesNotMatch", lambda: _check(req, secret="other"), SECRET)
    query = req.query_string.replace("MaxResults=5", "MaxResults=6")
    tampered = SignedRequest(req.method, req.path, query, req.headers, req.body)
    _refused("SignatureDoesNotMatch", lambda: _check(tampered), SECRET)


def test_v4_query_spaces_may_arrive_as_plus_or_percent_20() -> None:
    # botocore signs spaces as %20 but its prepared GET URL sends them as "+".
    req = _v4("GET", URLS[0], params=TRICKY)
    assert "a+b" in req.query_string
    assert _check(req).access_key == KEY
    strict = SignedRequest("GET", req.path, req.query_string.replace("+", "%20"), req.headers)
    assert _check(strict).access_key == KEY


@pytest.mark.parametrize(
    "content_type",
    [f"{FORM}; charset=utf-8", FORM, f"{FORM};charset=UTF-8", f"{FORM};  charset=utf-8 "],
)
@pytest.mark.parametrize("region", REGIONS[:4])
def test_botocore_v4_post_form(content_type: str, region: str) -> None:
    req = _v4("POST", URLS[0], region, data=TRICKY, headers={"Content-Type": content_type})
    assert req.body.startswith(b"Action=DescribeInstances&")
    assert _check(req) == Verified(KEY, "v4", region)
    other = "text/plain" if "charset" in content_type else f"{FORM}; charset=utf-8"
    retyped = [(n, other if n == "Content-Type" else v) for n, v in _pairs(req)]
    changed = SignedRequest(req.method, req.path, req.query_string, retyped, req.body)
    _refused("SignatureDoesNotMatch", lambda: _check(changed), SECRET)


def test_botocore_v4_dated_by_the_date_header() -> None:
    req = _v4("POST", URLS[1], data=TRICKY, headers={"Date": "Mon, 01 Jan 2001 00:00:00 GMT"})
    names = [n.lower() for n, _ in _pairs(req)]
    assert "date" in names
    assert "x-amz-date" not in names
    assert _check(req).version == "v4"
    later = datetime.now(UTC) + timedelta(minutes=16)
    _refused("RequestExpired", lambda: _check(req, now=later))


def test_botocore_v4_with_content_sha256_header() -> None:
    body = urlencode(TRICKY).encode()
    digest = hashlib.sha256(body).hexdigest()
    req = _v4("POST", URLS[0], data=body, headers={"X-Amz-Content-SHA256": digest})
    assert _check(req).access_key == KEY
    wrong = SignedRequest(req.method, req.path, "", req.headers, body.replace(b"=5", b"=6"))
    _refused("SignatureDoesNotMatch", lambda: _check(wrong), SECRET)


def test_unsigned_payload_is_refused_when_there_is_a_body() -> None:
    body = urlencode(TRICKY).encode()
    req = _v4("POST", URLS[0], data=body, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    _refused("SignatureDoesNotMatch", lambda: _check(req), SECRET)
    empty = _v4("GET", URLS[0], params=TRICKY, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert _check(empty).access_key == KEY


def _presigned(
    method: str, region: str = "us-east-1", expires: int = 3600, **kwargs: Any
) -> SignedRequest:
    request = AWSRequest(method=method, url=URLS[0], **kwargs)
    SigV4QueryAuth(CREDS, "ec2", region, expires=expires).add_auth(request)
    return _sent(request)


def _query_date(req: SignedRequest) -> datetime:
    stamp = dict(parse_qsl(req.query_string))["X-Amz-Date"]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("region", REGIONS)
def test_botocore_presigned_get(region: str) -> None:
    req = _presigned("GET", region, params=TRICKY)
    assert "X-Amz-Signature=" in req.query_string
    assert _check(req) == Verified(KEY, "v4", region)
    query = req.query_string.replace("MaxResults=5", "MaxResults=6")
    tampered = SignedRequest(req.method, req.path, query, req.headers, req.body)
    _refused("SignatureDoesNotMatch", lambda: _check(tampered), SECRET)


def test_botocore_presigned_post_moves_the_body_into_the_query() -> None:
    req = _presigned("POST", data=TRICKY, headers={"Content-Type": f"{FORM}; charset=utf-8"})
    assert req.body == b""
    assert "Action=DescribeInstances" in req.query_string
    assert _check(req).version == "v4"


def test_presigned_expiry_is_its_own_window() -> None:
    req = _presigned("GET", expires=60, params=TRICKY)
    signed = _query_date(req)
    assert _check(req, now=signed + timedelta(seconds=60))
    _refused("RequestExpired", lambda: _check(req, now=signed + timedelta(seconds=61)))
    _refused("RequestExpired", lambda: _check(req, now=signed - timedelta(minutes=16)))
    long_lived = _presigned("GET", expires=3600, params=TRICKY)
    assert _check(long_lived, now=_query_date(long_lived) + timedelta(minutes=30))


def test_presigned_without_expires_uses_the_clock_window() -> None:
    req = _presigned("GET", params=TRICKY)
    query = "&".join(p for p in req.query_string.split("&") if not p.startswith("X-Amz-Expires="))
    unexpiring = SignedRequest(req.method, req.path, query, req.headers, req.body)
    # X-Amz-Expires was signed, so dropping it breaks the signature once the window allows it.
    _refused("SignatureDoesNotMatch", lambda: _check(unexpiring))
    _refused(
        "RequestExpired", lambda: _check(unexpiring, now=_query_date(req) + timedelta(minutes=16))
    )


@pytest.mark.parametrize("expires", ["-1", "604801", "soon"])
def test_presigned_expires_must_be_sane(expires: str) -> None:
    req = _presigned("GET", params=TRICKY)
    query = req.query_string.replace("X-Amz-Expires=3600", f"X-Amz-Expires={expires}")
    bad = SignedRequest(req.method, req.path, query, req.headers, req.body)
    _refused("IncompleteSignature", lambda: _check(bad))


def test_presigned_with_another_algorithm() -> None:
    req = _presigned("GET", params=TRICKY)
    query = req.query_string.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")
    _refused("AuthFailure", lambda: _check(SignedRequest("GET", req.path, query, req.headers)))
    query = "&".join(p for p in req.query_string.split("&") if "X-Amz-Algorithm" not in p)
    _refused(
        "IncompleteSignature", lambda: _check(SignedRequest("GET", req.path, query, req.headers))
    )


def _v2(method: str, url: str, **kwargs: Any) -> SignedRequest:
    request = AWSRequest(method=method, url=url, **kwargs)
    SigV2Auth(CREDS).add_auth(request)
    return _sent(request)


@pytest.mark.parametrize("url", URLS)
def test_botocore_v2_get_with_query(url: str) -> None:
    req = _v2("GET", url, params=dict(TRICKY))
    assert "SignatureMethod=HmacSHA256" in req.query_string
    assert _check(req) == Verified(KEY, "v2", None)
    _refused("SignatureDoesNotMatch", lambda: _check(req, secret="other"), SECRET)


@pytest.mark.parametrize("content_type", [f"{FORM}; charset=utf-8", FORM])
def test_botocore_v2_post_form(content_type: str) -> None:
    req = _v2("POST", URLS[0], data=dict(TRICKY), headers={"Content-Type": content_type})
    assert b"Signature=" in req.body
    assert _check(req).version == "v2"
    moved = SignedRequest(req.method, "/services/other/", "", req.headers, req.body)
    _refused("SignatureDoesNotMatch", lambda: _check(moved), SECRET)


def _v2_by_hand(
    method: str, host: str, path: str, params: dict[str, str], secret: str, algorithm: str
) -> dict[str, str]:
    """A SigV2 signer written from the AWS documentation, for what botocore does not send."""
    signed = {
        **params,
        "AWSAccessKeyId": KEY,
        "SignatureVersion": "2",
        "SignatureMethod": algorithm,
    }
    query = "&".join(
        f"{quote(k.encode(), safe='-_.~')}={quote(v.encode(), safe='-_.~')}"
        for k, v in sorted(signed.items())
    )
    digest = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}[algorithm]
    mac = hmac.new(secret.encode(), f"{method}\n{host.lower()}\n{path}\n{query}".encode(), digest)
    return {**signed, "Signature": base64.b64encode(mac.digest()).decode()}


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("algorithm", ["HmacSHA1", "HmacSHA256"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_v2_by_hand(algorithm: str, method: str) -> None:
    now = datetime(2026, 11, 25, 13, 48, 22, tzinfo=UTC)
    host, path = "EC2.Example.test:8773", "/services/compute/"
    params = _v2_by_hand(
        method, host, path, {**TRICKY, "Timestamp": _stamp(now)}, SECRET, algorithm
    )
    encoded = urlencode(params)
    query, body = (encoded, b"") if method == "GET" else ("", encoded.encode())
    req = SignedRequest(method, path, query, [("Host", host), ("Content-Type", FORM)], body)
    assert _check(req, now=now) == Verified(KEY, "v2", None)
    _refused("RequestExpired", lambda: _check(req, now=now + timedelta(minutes=16)))


def test_v2_expires_instead_of_timestamp() -> None:
    now = datetime(2026, 11, 25, 13, 48, 22, tzinfo=UTC)
    expires = _stamp(now + timedelta(hours=2))
    params = _v2_by_hand("GET", "h", "/", {**TRICKY, "Expires": expires}, SECRET, "HmacSHA256")
    req = SignedRequest("GET", "/", urlencode(params), [("Host", "h")])
    assert _check(req, now=now + timedelta(hours=1)).version == "v2"
    _refused("RequestExpired", lambda: _check(req, now=now + timedelta(hours=2, seconds=1)))


# ---------------------------------------------------------------- the signing-key cache


def test_signing_key_matches_the_aws_documentation_example() -> None:
    key = SigningKeyCache(4).get(SECRET, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_signing_key_cache_is_bounded_and_least_recently_used() -> None:
    cache = SigningKeyCache(2)
    first = cache.get(SECRET, "20261125", "a", "ec2")
    second = cache.get(SECRET, "20261125", "b", "ec2")
    assert cache.get(SECRET, "20261125", "a", "ec2") is first
    cache.get(SECRET, "20261125", "c", "ec2")
    assert len(cache) == 2
    assert cache.get(SECRET, "20261125", "a", "ec2") is first
    assert cache.get(SECRET, "20261125", "b", "ec2") is not second
    assert SECRET not in repr(cache)


def test_verifier_cache_stays_within_its_size() -> None:
    verifier = Verifier(cache_size=3)
    for region in REGIONS:
        _check(_v4("GET", URLS[0], region, params=TRICKY), verifier=verifier)
        assert len(verifier.keys) <= 3
    assert len(verifier.keys) == 3


def test_verifier_without_a_cache_still_verifies() -> None:
    verifier = Verifier(cache_size=0)
    for record in V4_RECORDS[:5]:
        assert _verify(record, verifier=verifier)
    assert len(verifier.keys) == 0


def test_one_verifier_serves_every_record_from_one_cached_key() -> None:
    verifier = Verifier()
    for record in RECORDS:
        _verify(record, verifier=verifier)
    assert len(verifier.keys) == 1


def test_aiohttp_headers_are_read_as_the_index_of_their_pairs() -> None:
    """A case-insensitive multidict (what aiohttp hands over) is looked up as it is, and reads
    the same as the index made from its pairs: repeats in order, any case, absent names."""
    pairs = [("Host", "h"), ("X-Amz-Date", "d"), ("x-custom", "a"), ("X-CUSTOM", "b")]
    view = _index_headers(CIMultiDictProxy(CIMultiDict(pairs)))
    index = _index_headers(pairs)
    for name in ("host", "x-amz-date", "x-custom", "authorization"):
        assert view.get(name) == index.get(name)
        assert (name in view) == (name in index)
    assert view["x-custom"] == ["a", "b"] and sorted(view) == sorted(index)
    assert len(view) == len(index) == 3
