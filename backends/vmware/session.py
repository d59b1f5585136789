"""One logged-in vSphere session per target, and the few calls everything else is built on.

Decisions:

* Settings are checked before any network call: ``url`` must be ``https://host[:port]``;
  the secret must have ``user`` and ``password``. ``insecure`` turns certificate checks off.
* The SOAP stub keeps a pool of HTTP connections as large as the backend's thread pool, so
  every pool thread can have a call in flight. Every socket has a timeout.
* The session logs in lazily and once (under a lock); a call that finds the session expired
  (``NotAuthenticated``) logs in again and is retried once. Nothing else is retried here.
* Property reads go through :meth:`Session.retrieve`: one ``RetrievePropertiesEx`` (plus
  ``ContinueRetrievePropertiesEx`` pages), returning plain dicts, never one call per object.
* Files (config drives) reach the datastore over the ``/folder`` HTTP interface with the
  session's cookie, as the vSphere clients do; disks of an OVF import go to the device URLs
  of an HTTP NFC lease the same way, streamed from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from backends.vmware.faults import translate
from backends.vmware.sdk import SmartStubAdapter, vim, vmodl
from broker.errors import BackendError, BackendUnavailable, InvalidRequest

T = TypeVar("T")
PC = vmodl.query.PropertyCollector
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)
    insecure: bool
    timeout: float


def endpoint_of(settings: Mapping[str, Any], secret: Mapping[str, Any]) -> Endpoint:
    """The endpoint a target's settings name, or InvalidRequest saying what is wrong."""
    url = str(settings.get("url") or "")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise InvalidRequest(
            "a VMware target needs --vsphere https://vcenter-or-esxi[:port]", field="url"
        )
    user, password = str(secret.get("user") or ""), str(secret.get("password") or "")
    if not user or not password:
        raise InvalidRequest("a VMware target needs --user and --password", field="user")
    return Endpoint(
        url=f"https://{parsed.netloc.rsplit('@', 1)[-1]}",
        host=parsed.hostname,
        port=parsed.port or 443,
        user=user,
        password=password,
        insecure=bool(settings.get("insecure", False)),
        timeout=float(settings.get("call_timeout", 60.0)),
    )


def to_dict(content: Any) -> dict[str, Any]:
    """An ObjectContent's properties as ``{path: value}``."""
    return {p.name: p.val for p in (content.propSet or ())}


class Session:
    def __init__(self, endpoint: Endpoint, pool_size: int) -> None:
        self.endpoint = endpoint
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._si: Any = None
        self._content: Any = None

    # --- connection -----------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.endpoint.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _login(self) -> None:
        ep = self.endpoint
        what = f"connect to {ep.url}"
        try:
            stub = SmartStubAdapter(
                host=ep.host,
                port=ep.port,
                poolSize=self.pool_size,
                sslContext=self._ssl_context(),
                httpConnectionTimeout=ep.timeout,
                connectionPoolTimeout=-1,
            )
        except Exception as exc:  # pyVim reports an unreachable endpoint as a bare Exception
            cause = exc.__cause__ or exc.__context__ or exc
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise translate(cause, what) from exc
            raise BackendUnavailable(
                f"cannot reach {ep.url}: it does not answer as a vSphere endpoint "
                f"({type(cause).__name__}: {cause})"
            ) from exc
        si = vim.ServiceInstance("ServiceInstance", stub)
        try:
            content = si.RetrieveContent()
            content.sessionManager.Login(ep.user, ep.password)
        except Exception as exc:
            stub.DropConnections()
            raise translate(exc, what) from exc
        self._si, self._content = si, content

    @property
    def content(self) -> Any:
        """The ServiceContent of a logged-in session (logs in on first use)."""
        with self._lock:
            if self._content is None:
                self._login()
            return self._content

    def call(self, fn: Callable[[Any], T], what: str, *, idempotent: bool = True) -> T:
        """``fn(content)``, logged in, with vSphere faults translated; retried once on expiry,
        and (when ``idempotent``) once when a pooled connection turns out to be closed."""
        for attempt in (1, 2):
            content = self.content
            try:
                return fn(content)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                if attempt == 2 or not idempotent:
                    raise translate(exc, what) from exc
            except vim.fault.NotAuthenticated as exc:
                if attempt == 2:
                    raise translate(exc, what) from exc
                with self._lock:
                    if self._content is content:
                        self._si._stub.DropConnections()
                        self._si = self._content = None
            except BackendError:
                raise
            except Exception as exc:
                raise translate(exc, what) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            si, content, self._si, self._content = self._si, self._content, None, None
        if content is not None:
            with contextlib.suppress(Exception):  # a session that cannot log out just expires
                content.sessionManager.Logout()
        if si is not None:
            si._stub.DropConnections()

    # --- property reads -------------------------------------------------------------------

    def retrieve(self, specs: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """One RetrievePropertiesEx (and its pages): ``(object, {path: value})`` per object."""

        def run(content: Any) -> list[tuple[Any, dict[str, Any]]]:
            pc = content.propertyCollector
            out: list[tuple[Any, dict[str, Any]]] = []
            result = pc.RetrievePropertiesEx(list(specs), PC.RetrieveOptions())
            while result is not None:
                out.extend((oc.obj, to_dict(oc)) for oc in result.objects)
                if not result.token:
                    break
                result = pc.ContinueRetrievePropertiesEx(result.token)
            return out

        return self.call(run, "read properties")

    # --- datastore files ------------------------------------------------------------------

    def upload(self, datacenter: str, datastore: str, path: str, data: bytes) -> None:
        """PUT ``data`` to ``[datastore] path`` through the ``/folder`` HTTP interface."""
        self._file("PUT", datacenter, datastore, path, data)

    def download(self, datacenter: str, datastore: str, path: str, limit: int = 1 << 20) -> bytes:
        """GET ``[datastore] path`` (at most ``limit`` bytes: descriptors, not disks)."""
        return self._file("GET", datacenter, datastore, path, None, limit)

    def put_file(self, url: str, source: Path, content_type: str) -> None:
        """PUT a local file, streamed, to an HTTP NFC lease's device URL (``https://*/nfc/...``;
        ``*`` is this endpoint), with the session's cookie and this target's TLS settings."""
        self.content  # noqa: B018  log in first: the request carries the session's cookie
        ep = self.endpoint
        host, port, path = device_target(url, ep.host, ep.port)
        headers = {"Cookie": str(self._si._stub.cookie), "Content-Type": content_type}
        conn = http.client.HTTPSConnection(
            host, port, timeout=ep.timeout, context=self._ssl_context()
        )
        try:
            put_stream(conn, path, source, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise translate(exc, f"upload {source.name}") from exc
        finally:
            conn.close()

    def _file(
        self,
        method: str,
        datacenter: str,
        datastore: str,
        path: str,
        data: bytes | None,
        limit: int = 0,
    ) -> bytes:
        self.content  # noqa: B018  log in first: the request carries the session's cookie
        ep = self.endpoint
        what = f"{method} [{datastore}] {path}"
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
        target = f"/folder/{urllib.parse.quote(path)}?{query}"
        headers = {"Cookie": str(self._si._stub.cookie)}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(len(data))
        conn = http.client.HTTPSConnection(
            ep.host, ep.port, timeout=ep.timeout, context=self._ssl_context()
        )
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read(limit + 1) if limit else resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise translate(exc, what) from exc
        finally:
            conn.close()
        if resp.status not in (200, 201, 204):
            raise BackendError(f"{what}: HTTP {resp.status} {resp.reason}")
        if limit and len(body) > limit:
            raise BackendError(f"{what}: larger than {limit} bytes")
        return body


def device_target(url: str, host: str, port: int) -> tuple[str, int, str]:
    """``(host, port, path)`` to PUT a lease's device URL to (``*`` is the endpoint's host)."""
    parsed = urllib.parse.urlsplit(url.replace("://*/", f"://{host}:{port}/", 1))
    if parsed.scheme != "https" or not parsed.hostname:
        raise BackendError(f"the lease gave a device URL that is not https: {url[:80]}")
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return parsed.hostname, parsed.port or 443, path


def put_stream(
    conn: http.client.HTTPSConnection, path: str, source: Path, headers: dict[str, str]
) -> None:
    """PUT ``source`` in chunks, with its length; raise unless the answer is a success."""
    size = source.stat().st_size
    conn.putrequest("PUT", path)
    for key, value in {**headers, "Content-Length": str(size)}.items():
        conn.putheader(key, value)
    conn.endheaders()
    with source.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            conn.send(chunk)
    resp = conn.getresponse()
    resp.read()
    if resp.status not in (200, 201, 204):
        raise BackendError(f"PUT {source.name}: HTTP {resp.status} {resp.reason}")
