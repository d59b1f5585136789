"""The peer backend: another cloudbroker, reached exactly as one of its users reaches it.

Decides how this site places, watches and acts on instances that run on a federated peer. The
peer keeps its own authority: we are an ordinary user there (its operator made the user and set
its quotas), we speak its public EC2 API through boto3 and read one small capacity document
from its admin API (:mod:`frontends.admin.capacity`). Its refusals (quota, unknown image,
credentials) come back as the matching broker errors carrying the peer's own words.

**Capacity**: the probe reads the document; placement then sees the peer as a target whose
total is what the peer says is free for us plus what ours already hold there (the snapshot
subtracts our own instances again), so in-flight launches are never counted twice or missed.

**Launch** is idempotent per instance id: RunInstances carries a ClientToken derived from our
site and instance id, and tags naming both (:mod:`backends.peer.wire`), plus the hop count. An
instance that already crossed ``max_hops`` links, or that came from that very peer, is refused
before anything is sent. While the peer does not answer, the launch keeps trying for
``launch_patience`` seconds, and after an ambiguous failure it first *looks* for an instance
with our tag before resending: a peer killed mid-launch and restarted never gets a duplicate.

**Observe**: one paginated DescribeInstances filtered by our origin-site tag per monitor
cycle (the probe fetches it; the observe that follows reuses it). An instance the peer no
longer shows, or shows terminated without a launch failure, is left out (the monitor marks it
lost); one the peer could not start is reported failed with the peer's reason.

**Down**: the monitor counts missed probes and marks the target in error, its instances
unknown, never terminated. Meanwhile actions and console reads fail at once with
``BackendUnavailable`` naming the peer rather than waiting on timeouts.

Settings: ``url`` (the peer's EC2 endpoint), ``admin_url`` (its admin API, for the capacity
document; default ``url``), ``region`` (the peer's; default: from its document), ``site``
(ours, required: what the peer sees as origin), ``image_map`` (our image id or ``*`` -> the
peer's image id or name), ``flavor_map``, ``max_hops`` (1), ``threads`` (16),
``connect_timeout`` (3), ``read_timeout`` (30), ``call_timeout`` (45), ``launch_patience``
(120), ``observe_reuse`` (2), ``grace`` (30). Secret: ``access_key``, ``secret_key``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import aiohttp
import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from backends.peer import wire
from backends.peer.wire import GONE, CapacityDoc, Remote
from broker.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BrokerError,
    InvalidRequest,
    InvalidState,
    NoCapacity,
    NotFound,
    QuotaExceeded,
    Unsupported,
)
from broker.mappings import mapped_name
from broker.protocols import LaunchSpec, Observed, Placement, TargetConfig, TargetProbe
from broker.states import Action, State

log = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    "DescribeInstances": "describe_instances",
    "DescribeRegions": "describe_regions",
    "GetConsoleOutput": "get_console_output",
    "RunInstances": "run_instances",
    "StartInstances": "start_instances",
    "StopInstances": "stop_instances",
    "TerminateInstances": "terminate_instances",
    "RebootInstances": "reboot_instances",
}

#: our action -> (EC2 action, extra parameters, the response list holding the new state)
ACTIONS: dict[Action, tuple[str, dict[str, Any], str | None]] = {
    Action.STOP: ("StopInstances", {}, "StoppingInstances"),
    Action.POWEROFF: ("StopInstances", {"Force": True}, "StoppingInstances"),
    Action.START: ("StartInstances", {}, "StartingInstances"),
    Action.REBOOT: ("RebootInstances", {}, None),
    Action.TERMINATE: ("TerminateInstances", {}, "TerminatingInstances"),
}

REFUSED = frozenset(
    {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch"}
)
OVER_QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "QuotaExceeded"})


class PeerRefused(BackendUnavailable):
    """The peer answered and refused our credentials: retrying will not help."""


def translate(exc: Exception, what: str) -> BrokerError:
    """The one place botocore's exceptions become the broker's, keeping the peer's words."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        text = f"{what}: {code}: {err.get('Message', '')}".rstrip(": ")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in REFUSED:
            return PeerRefused(f"{text} (the peer refused our credentials)")
        if code in OVER_QUOTA:
            return QuotaExceeded(text)
        if code == "InsufficientInstanceCapacity":
            return NoCapacity(text)
        if code in ("IncorrectInstanceState", "IncorrectState"):
            return InvalidState(text)
        if code.endswith(".NotFound"):
            return NotFound(text)
        if status >= 500 or code in ("RequestLimitExceeded", "ServiceUnavailable"):
            return BackendUnavailable(text)
        if code.startswith(("Invalid", "Missing", "Unsupported")):
            return InvalidRequest(text)
        return BackendError(text)
    if isinstance(exc, ReadTimeoutError):
        return BackendTimeout(f"{what}: the peer did not answer in time")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return BackendUnavailable(f"{what}: the peer does not answer ({exc})")
    if isinstance(exc, BotoCoreError):
        return BackendError(f"{what}: {exc}")
    return BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}")


def _outage(exc: BrokerError) -> bool:
    return isinstance(exc, BackendUnavailable | BackendTimeout) and not isinstance(exc, PeerRefused)


class PeerBackend:
    kind: ClassVar[str] = "peer"

    def __init__(self, config: TargetConfig) -> None:
        s = config.settings
        self.config = config
        self.name = config.name
        self.url = str(s.get("url", "")).rstrip("/")
        self.admin_url = str(s.get("admin_url") or self.url).rstrip("/")
        self.region = str(s.get("region", ""))
        self.site = str(s.get("site", ""))
        self.max_hops = int(s.get("max_hops", 1))
        self.threads = int(s.get("threads", 16))
        self.call_timeout = float(s.get("call_timeout", 45.0))
        self.patience = float(s.get("launch_patience", 120.0))
        self.observe_reuse = float(s.get("observe_reuse", 2.0))
        self.grace = float(s.get("grace", 30.0))
        self.retry_base = float(s.get("retry_base", 0.2))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"peer-{config.name}")
        self._clients: dict[bool, Any] = {}
        self._client_lock = threading.Lock()
        self._http: aiohttp.ClientSession | None = None
        self.doc: CapacityDoc | None = None
        self._inventory: dict[str, Remote] = {}
        self._inventory_at: float | None = None
        self._refreshing: asyncio.Future[dict[str, Remote]] | None = None
        self._touched: dict[str, float] = {}  # peer ref -> when we launched or acted on it
        self._down: str = ""  # why the last probe failed ("" while the peer answers)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        """Check the settings, then reach the peer once through both of its APIs."""
        s = config.settings
        for key in ("url", "admin_url"):
            value = str(s.get(key) or s.get("url") or "")
            if not value.startswith(("http://", "https://")):
                raise InvalidRequest(f"a peer needs an http(s) {key} (got '{value[:80]}')")
        if not s.get("site"):
            raise InvalidRequest("a peer link needs settings['site']: this site's id", field="site")
        if not config.secret.get("access_key") or not config.secret.get("secret_key"):
            raise InvalidRequest("a peer link needs --access-key and --secret", field="secret")
        for name in ("image_map", "flavor_map"):
            if not isinstance(s.get(name) or {}, Mapping):
                raise InvalidRequest(f"settings['{name}'] must be a mapping", field=name)
        backend = PeerBackend(config)
        try:
            doc = await backend.capacity_doc()
            if doc.site == backend.site:
                raise InvalidRequest(f"the peer is this site itself ({doc.site})")
            await backend._call("DescribeRegions", {})
        finally:
            await backend.aclose()

    def _client(self, creating: bool) -> Any:
        client = self._clients.get(creating)
        if client is not None:
            return client
        with self._client_lock:
            client = self._clients.get(creating)
            if client is None:
                s = self.config.settings
                session = boto3.session.Session(
                    aws_access_key_id=str(self.config.secret.get("access_key", "")),
                    aws_secret_access_key=str(self.config.secret.get("secret_key", "")),
                    region_name=self.region or "cloudbroker-1",
                )
                client = session.client(
                    "ec2",
                    endpoint_url=self.url,
                    config=Config(
                        retries={"mode": "standard", "total_max_attempts": 1 if creating else 2},
                        connect_timeout=float(s.get("connect_timeout", 3.0)),
                        read_timeout=float(s.get("read_timeout", 30.0)),
                        max_pool_connections=self.threads,
                        user_agent_extra="cloudbroker-peer",
                    ),
                )
                self._clients[creating] = client
        return client

    def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """In a worker thread: one boto3 call, its errors translated."""
        client = self._client(operation == "RunInstances")
        what = f"{operation} on peer {self.name}"
        try:
            result: dict[str, Any] = getattr(client, METHODS[operation])(**params)
        except Exception as exc:  # botocore's errors, or an unparsable answer
            raise translate(exc, what) from exc
        return result

    async def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if not self.region:
            await self.capacity_doc()  # the peer's region signs our requests
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._pool, functools.partial(self._invoke, operation, params))
        try:
            return await asyncio.wait_for(job, self.call_timeout)
        except TimeoutError as exc:
            raise BackendTimeout(
                f"{operation} on peer {self.name} did not finish in {self.call_timeout:g}s"
            ) from exc

    def _fail_fast(self, what: str) -> None:
        if self._down:
            raise BackendUnavailable(f"peer {self.name} does not answer ({self._down}); {what}")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the capacity document --------------------------------------------------------------

    async def capacity_doc(self) -> CapacityDoc:
        """Fetch the peer's capacity document (errors carry the peer's own message)."""
        s = self.config.settings
        if self._http is None:
            timeout = aiohttp.ClientTimeout(
                total=float(s.get("read_timeout", 30.0)),
                connect=float(s.get("connect_timeout", 3.0)),
            )
            self._http = aiohttp.ClientSession(timeout=timeout)
        secret = self.config.secret
        pair = f"{secret.get('access_key', '')}:{secret.get('secret_key', '')}"
        auth = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}
        url = f"{self.admin_url}/api/v1/capacity"
        what = f"the capacity document of peer {self.name}"
        try:
            async with self._http.get(url, headers=auth) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise BackendTimeout(f"{what}: no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(f"{what}: the peer does not answer ({exc})") from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status != 200:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = f"{what}: {err.get('code', status)}: {err.get('message', '')}".rstrip(": ")
            if status in (401, 403):
                raise PeerRefused(f"{message} (the peer refused our credentials)")
            if status >= 500:
                raise BackendUnavailable(message)
            raise BackendError(message)
        try:
            doc = wire.parse_capacity(data)
        except ValueError as exc:
            raise BackendError(f"{what}: {exc}") from exc
        self.doc = doc
        if not self.region:
            self.region = doc.region
        return doc

    # --- inventory ------------------------------------------------------------------------

    async def _refresh(self) -> dict[str, Remote]:
        """All of ours on the peer; concurrent callers share one paginated DescribeInstances."""
        running = self._refreshing
        if running is None:
            running = asyncio.ensure_future(self._fetch_inventory())
            self._refreshing = running
            running.add_done_callback(self._refreshed)
        return await asyncio.shield(running)

    def _refreshed(self, fut: asyncio.Future[dict[str, Remote]]) -> None:
        if self._refreshing is fut:
            self._refreshing = None
        if not fut.cancelled():
            fut.exception()

    async def _fetch_inventory(self) -> dict[str, Remote]:
        params: dict[str, Any] = {
            "Filters": [{"Name": f"tag:{wire.TAG_ORIGIN_SITE}", "Values": [self.site]}],
            "MaxResults": 1000,
        }
        found: dict[str, Remote] = {}
        while True:  # a failed page fails the refresh: a partial view would "lose" instances
            page = await self._call("DescribeInstances", params)
            for reservation in page.get("Reservations", ()):
                for raw in reservation.get("Instances", ()):
                    remote = wire.parse_instance(raw)
                    found[remote.ref] = remote
            token = page.get("NextToken")
            if not token:
                break
            params = {**params, "NextToken": token}
        self._inventory = found
        self._inventory_at = time.monotonic()
        return found

    async def _find(self, rid: str) -> Remote | None:
        """Our instance ``rid`` on the peer, live, looked up by its tag."""
        filters = [
            {"Name": f"tag:{wire.TAG_ORIGIN_SITE}", "Values": [self.site]},
            {"Name": f"tag:{wire.TAG_ORIGIN_INSTANCE}", "Values": [rid]},
        ]
        got = await self._call("DescribeInstances", {"Filters": filters})
        for reservation in got.get("Reservations", ()):
            for raw in reservation.get("Instances", ()):
                remote = wire.parse_instance(raw)
                if remote.state not in GONE:
                    return remote
        return None

    # --- monitoring -----------------------------------------------------------------------

    async def probe(self) -> TargetProbe:
        """The peer's advertised room for us, plus what ours already hold there."""
        try:
            doc = await self.capacity_doc()
            inventory = await self._refresh()
        except BrokerError as exc:
            self._down = exc.message[:200]
            raise
        self._down = ""
        cpu = mem = 0
        live = [r for r in inventory.values() if r.state not in GONE]
        for remote in live:
            flavor = doc.flavor(remote.instance_type)
            if flavor is not None:
                cpu += flavor.vcpus
                mem += flavor.memory_mb
        return TargetProbe(
            total_cpu=doc.free_vcpus + cpu,
            total_memory_mb=doc.free_memory_mb + mem,
            total_disk_gb=doc.free_disk_gb,
            free_memory_mb=doc.free_memory_mb,
            free_disk_gb=float(doc.free_disk_gb),
            running=sum(1 for r in live if r.state == "running"),
            hypervisor="peer",
        )

    async def observe(self, refs: Sequence[str]) -> list[Observed]:
        at = self._inventory_at
        if at is not None and time.monotonic() - at <= self.observe_reuse:
            inventory = self._inventory
        else:
            inventory = await self._refresh()
        now = time.monotonic()
        out: list[Observed] = []
        for ref in refs:
            remote = inventory.get(ref)
            if remote is None:
                if now - self._touched.get(ref, -1e9) < self.grace:
                    out.append(Observed(ref, State.UNKNOWN, "not yet listed by the peer"))
                continue  # left out: the monitor marks it lost
            state = wire.to_state(remote)
            if state is State.DONE:
                continue  # ended on the peer outside this site: lost, as the monitor says
            reason = f"peer {self.name}: {remote.state}"
            if state is State.FAILED:
                reason = (
                    f"peer {self.name} could not start it: {remote.reason or remote.reason_code}"
                )
            out.append(
                Observed(
                    ref=ref,
                    state=state,
                    reason=reason,
                    private_ip=remote.private_ip,
                    public_ip=remote.public_ip,
                    instance_id=remote.our_id,
                )
            )
        return out

    async def console(self, ref: str) -> str:
        self._fail_fast("its console cannot be read now")
        got = await self._call("GetConsoleOutput", {"InstanceId": ref})
        text = str(got.get("Output") or "")
        try:
            return base64.b64decode(text, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return text

    # --- launch ---------------------------------------------------------------------------

    def _image(self, spec: LaunchSpec, doc: CapacityDoc | None) -> str:
        """The peer's image id for ``spec``: mappings first, then a peer image of that name."""
        mapped = spec.image_mappings.get(self.name) or spec.image_mappings.get(self.config.id)
        if not mapped:
            table = spec.target_settings.get("image_map") or {}
            if isinstance(table, Mapping):
                mapped = mapped_name(table, spec.image_id)
        name = str(getattr(spec, "image_name", "") or "")
        if doc is not None:
            if mapped and mapped not in doc.images:
                mapped = doc.image_named(mapped) or mapped  # a map may name the peer's image
            if not mapped and name:
                mapped = doc.image_named(name)
        if not mapped:
            raise InvalidRequest(
                f"the image {spec.image_id} has no image on peer {self.name}: map it in the "
                "peer's or the burst policy's image_map",
                field="image_id",
            )
        return mapped

    def _run_params(self, spec: LaunchSpec, image: str) -> dict[str, Any]:
        flavors = spec.target_settings.get("flavor_map") or {}
        flavor = mapped_name(flavors, spec.flavor) if isinstance(flavors, Mapping) else None
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": flavor or spec.flavor,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": self._token(spec.instance_id),
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": wire.launch_tags(
                        spec.tags, instance_id=spec.instance_id, site=self.site, hops=spec.hops
                    ),
                }
            ],
        }
        if spec.user_data:
            params["UserData"] = spec.user_data
        return params

    async def launch(self, spec: LaunchSpec) -> Placement:
        doc = self.doc
        origin = spec.tags.get(wire.TAG_ORIGIN_SITE, "")
        why = wire.refuses_forward(spec.hops, self.max_hops, origin, doc.site if doc else "")
        if why:
            raise InvalidRequest(why)
        params = self._run_params(spec, self._image(spec, doc))
        rid = spec.instance_id
        deadline = time.monotonic() + self.patience
        must_look = False  # the ClientToken makes a first send safe; a resend looks first
        attempt = 0
        while True:
            try:
                if must_look:  # never send again before knowing the last request did nothing
                    found = await self._find(rid)
                    if found is not None:
                        return self._placed(found)
                    must_look = False
                answer = await self._call("RunInstances", params)
                made = list(answer.get("Instances", ()))
                if not made:
                    raise BackendError(f"peer {self.name} answered RunInstances with no instance")
                remote = wire.parse_instance(made[0])
                if remote.state in GONE and params["ClientToken"] == self._token(rid):
                    # the token's earlier instance has ended (a relaunch after a stop): a new one
                    params["ClientToken"] = wire.client_token(self.site, f"{rid}/{remote.ref}")
                    continue
                return self._placed(remote)
            except BrokerError as exc:
                if not _outage(exc) or time.monotonic() >= deadline:
                    raise
                log.info("launch of %s on peer %s waits: %s", rid, self.name, exc.message)
                must_look = True
            attempt += 1
            await asyncio.sleep(min(2.0, self.retry_base * 2.0 ** min(attempt, 6)))

    def _token(self, rid: str) -> str:
        return wire.client_token(self.site, rid)

    def _placed(self, remote: Remote) -> Placement:
        self._touched[remote.ref] = time.monotonic()
        self._inventory[remote.ref] = remote
        state = wire.to_state(remote)
        if state in (State.UNKNOWN, State.DONE, State.FAILED):
            state = State.BOOT
        return Placement(remote.ref, state, remote.private_ip, remote.public_ip)

    # --- actions --------------------------------------------------------------------------

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        entry = ACTIONS.get(action)
        if entry is None:
            raise Unsupported(f"instances on peer {self.name} cannot {action.value}")
        self._fail_fast(f"it cannot {action.value} its instances now")
        operation, extra, answer_key = entry
        params: dict[str, Any] = {"InstanceIds": [ref], **extra}
        if action is Action.STOP and force:
            params["Force"] = True
        self._touched[ref] = time.monotonic()
        try:
            got = await self._call(operation, params)
        except NotFound:
            if action is Action.TERMINATE:
                return None  # already gone there
            raise
        if answer_key is None:
            return Observed(ref, State.RUNNING, f"peer {self.name}: rebooting")
        name = str(got[answer_key][0]["CurrentState"]["Name"])
        if action is Action.TERMINATE:
            return None
        state = wire.STATE_MAP.get(name, State.UNKNOWN)
        return Observed(ref, state, f"peer {self.name}: {name}")
