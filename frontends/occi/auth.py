"""Decides who is calling: HTTP Basic (access key and secret) or an ``X-Auth-Token``.

Basic credentials are the user's EC2 access key and secret key, checked against the same user
store (cached by :class:`broker.runtime.CredentialCache`) with a constant-time comparison.
Tokens are the ones the admin API and ``cloudbroker user token NAME`` issue. Anything else,
or nothing, is :class:`broker.errors.Unauthenticated` (401 with a Basic challenge).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Final

from aiohttp import web

from broker.auth import Caller
from broker.errors import Unauthenticated
from broker.runtime import Runtime

MAX_CREDENTIAL: Final = 512


async def authenticate(rt: Runtime, request: web.Request) -> Caller:
    token = request.headers.get("X-Auth-Token")
    if token is not None:
        if not token or len(token) > MAX_CREDENTIAL:
            raise Unauthenticated("the X-Auth-Token is not valid")
        caller = await rt.caller_for_token(token.strip())
        if caller is None:
            raise Unauthenticated("the X-Auth-Token is unknown or expired")
        return caller
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > MAX_CREDENTIAL:
        raise Unauthenticated("send HTTP Basic credentials (access key, secret) or X-Auth-Token")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("the Basic credentials are not valid base64") from None
    key, colon, secret = decoded.partition(":")
    if not colon or not key:
        raise Unauthenticated("the Basic credentials need an access key and a secret")
    found = await rt.caller_for_key(key)
    if found is None or not hmac.compare_digest(found[1].encode(), secret.encode()):
        raise Unauthenticated("the access key or secret is wrong")
    return found[0]
