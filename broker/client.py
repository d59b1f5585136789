"""A small synchronous client of the admin API, for the CLI.

It finds the API's address and a token from, in order: explicit options, the environment
(``CLOUDBROKER_URL``, ``CLOUDBROKER_TOKEN``), and the operator credential that ``serve`` wrote
into the data dir of the configuration given with ``--config``.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from broker.errors import BrokerError


class ClientError(BrokerError):
    """The admin API refused a request, or could not be reached."""


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def discover(
        cls, url: str | None, token: str | None, data_dir: Path, listen: str
    ) -> AdminClient:
        url = url or os.environ.get("CLOUDBROKER_URL")
        token = token or os.environ.get("CLOUDBROKER_TOKEN")
        cred = data_dir / "operator.json"
        if (url is None or token is None) and cred.exists():
            try:
                saved = json.loads(cred.read_text())
            except (OSError, ValueError):
                raise ClientError(f"cannot read the operator credential {cred}") from None
            url = url or saved.get("url")
            token = token or saved.get("token")
        return cls(url or f"http://{listen}", token)

    def call(
        self, method: str, path: str, data: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(
                [
                    (k, v)
                    for k, vs in query.items()
                    if vs is not None
                    for v in (vs if isinstance(vs, list | tuple) else [vs])
                ]
            )
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - our own API
        req.add_header("Accept", "application/json")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ClientError(_message(exc.read(), exc.code)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                f"cannot reach the admin API at {self.url} ({reason}); "
                "is 'cloudbroker serve' running?"
            ) from None
        return json.loads(raw) if raw else None

    def upload(self, path: str, source: Path, progress: Callable[[int], None]) -> Any:
        """PUT a file's bytes, calling ``progress(bytes_sent)`` as they go."""
        size = source.stat().st_size

        class Reader(io.RawIOBase):
            def __init__(self, fh: BinaryIO) -> None:
                self.fh = fh

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                chunk = self.fh.read(min(n, 1 << 20) if n > 0 else 1 << 20)
                progress(len(chunk))
                return chunk

        with source.open("rb") as fh:
            req = urllib.request.Request(self.url + path, data=Reader(fh), method="PUT")  # noqa: S310
            req.add_header("Content-Length", str(size))
            req.add_header("Content-Type", "application/octet-stream")
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                raise ClientError(_message(exc.read(), exc.code)) from None
            except (urllib.error.URLError, OSError) as exc:
                raise ClientError(
                    f"the upload to {self.url} failed: {getattr(exc, 'reason', exc)}"
                ) from None


def _message(raw: bytes, status: int) -> str:
    try:
        err = json.loads(raw)["error"]
        return f"{err['message']} ({err['code']})"
    except (ValueError, KeyError, TypeError):
        return f"the admin API answered {status}"
