"""The EC2 backend: one public-cloud region per target, driven through boto3.

boto3 blocks, so every call runs in the backend's own bounded thread pool, through one gate
(:meth:`Ec2Backend._call`) that takes tokens from our copy of EC2's rate limits, refuses while
the region's circuit is open, bounds the call with a timeout and turns botocore's errors into the
broker's (:func:`translate`, the one place). The read client retries with botocore's adaptive
mode; the client that creates things (RunInstances, CreateVolume) does not retry by itself:
moto's server ignores ClientToken and a timed-out request may still have acted, so after an
ambiguous failure we first *look* for what the request made (by its tags), then repeat it with
the same ClientToken.

**What EC2 holds of ours** is found by one tag, ``cloudbroker:broker`` = this broker's id: one
paginated DescribeInstances filtered by it (the *inventory*) answers the probe, and the observe
that follows in the same monitor cycle reuses it, so steady-state observation costs one call per
cycle whatever the number of instances. Our instance id is read back from the tags and the
instance's launch index (:mod:`backends.ec2.batching`).

**Launch** is idempotent per instance id: an id this process launched is answered from memory; an
id whose earlier attempt ended ambiguously, or any id before this process has seen the inventory
once (a restart), is looked up in a fresh inventory before anything is sent. Concurrent launches
with equal parameters share one RunInstances (``batch_window``, ``batch_max``).

**Observe**: an instance EC2 no longer shows, or shows terminated by someone else, is left out
of the answer, so the monitor marks it lost; one EC2 could not start is reported *failed* with
EC2's reason; one that carries our tag but that no record watches, twice in a row and not touched
by us lately, is *unmanaged*: listed by :meth:`Ec2Backend.unmanaged` and returned as an extra
:class:`Observed` whose reason starts with ``unmanaged:`` (the monitor ignores refs it did not ask
about).

Settings (``TargetConfig.settings``): ``region`` (required), ``endpoint``, ``broker_id`` (else a
file ``ec2-broker-id`` in the data dir, made once), ``image_map``, ``flavor_map``, ``key_map``,
``security_group_map``, ``subnet`` (see :mod:`backends.ec2.batching`), ``max_instances`` (20),
``max_vcpus``, ``max_memory_mb``, ``max_disk_gb``, ``prices`` {instance type: USD per hour},
``default_price`` (0), ``budget_per_hour`` (none), ``rate_limits``, ``threads`` (8),
``connect_timeout`` (5), ``read_timeout`` (20), ``max_attempts`` (5), ``call_timeout`` (60),
``breaker_threshold`` (5), ``breaker_cooldown`` (30), ``batch_window`` (0.05), ``batch_max``
(50), ``page_size`` (1000), ``observe_reuse`` (2), ``grace`` (60). Secrets
(``TargetConfig.secret``: ``access_key``, ``secret_key``) go to botocore and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from backends.ec2 import batching
from backends.ec2.batching import TAG_BATCH, TAG_BROKER, TAG_VOLUME, Coalescer, RunKey
from backends.ec2.limits import CircuitBreaker, RegionLimits
from backends.ec2.states import BILLED, GONE, launch_failed, to_state
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
from broker.protocols import (
    LaunchSpec,
    Observed,
    Placement,
    TargetConfig,
    TargetProbe,
    VolumeSpec,
)
from broker.states import Action, State

log = logging.getLogger(__name__)

#: EC2 action -> boto3 method: every call this backend makes.
METHODS: dict[str, str] = {
    "DescribeInstances": "describe_instances",
    "DescribeVolumes": "describe_volumes",
    "DescribeAvailabilityZones": "describe_availability_zones",
    "GetConsoleOutput": "get_console_output",
    "RunInstances": "run_instances",
    "StartInstances": "start_instances",
    "StopInstances": "stop_instances",
    "TerminateInstances": "terminate_instances",
    "RebootInstances": "reboot_instances",
    "CreateVolume": "create_volume",
    "AttachVolume": "attach_volume",
    "DetachVolume": "detach_volume",
    "DeleteVolume": "delete_volume",
}

#: our action -> (EC2 action, extra parameters, the response list holding the new state).
ACTIONS: dict[Action, tuple[str, dict[str, Any], str | None]] = {
    Action.STOP: ("StopInstances", {}, "StoppingInstances"),
    Action.POWEROFF: ("StopInstances", {"Force": True}, "StoppingInstances"),
    Action.START: ("StartInstances", {}, "StartingInstances"),
    Action.REBOOT: ("RebootInstances", {}, None),
    Action.TERMINATE: ("TerminateInstances", {}, "TerminatingInstances"),
}

THROTTLED = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
REFUSED_CREDENTIALS = frozenset(
    {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch"}
)
OUT_OF_CAPACITY = frozenset({"InsufficientInstanceCapacity", "InsufficientHostCapacity"})
OVER_QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "VolumeLimitExceeded"})
WRONG_STATE = frozenset({"IncorrectInstanceState", "IncorrectState", "VolumeInUse"})
#: creating calls: sent once per attempt, our own loop decides about retries.
CREATING = frozenset({"RunInstances", "CreateVolume"})


class CircuitOpen(BackendUnavailable):
    """Nothing was sent: the region's circuit breaker is open."""


def translate(exc: Exception, what: str) -> BrokerError:
    """The one place botocore's exceptions become the broker's (messages carry no secrets)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        text = f"{what}: {code}: {err.get('Message', '')}".rstrip(": ")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLED:
            return BackendUnavailable(f"{text} (EC2 kept throttling after our retries)")
        if code in REFUSED_CREDENTIALS:
            return BackendUnavailable(f"{what}: EC2 refused our credentials ({code})")
        if code in OUT_OF_CAPACITY:
            return NoCapacity(text)
        if code in OVER_QUOTA:
            return QuotaExceeded(text)
        if code in WRONG_STATE:
            return InvalidState(text)
        if code.endswith(".NotFound"):
            return NotFound(text)
        if status >= 500:
            return BackendUnavailable(text)
        if code.startswith(("Invalid", "Missing", "Unsupported")):
            return InvalidRequest(text)
        return BackendError(text)
    if isinstance(exc, ConnectionError):
        return BackendUnavailable(f"{what}: {exc}")
    if isinstance(exc, HTTPClientError) and isinstance(exc, TimeoutError):
        return BackendTimeout(f"{what}: {exc}")
    if isinstance(exc, HTTPClientError):
        return BackendUnavailable(f"{what}: {exc}")
    if isinstance(exc, BotoCoreError):
        return BackendError(f"{what}: {exc}")
    return BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}")  # e.g. unparsable answers


def _outage(exc: BrokerError) -> bool:
    """Does this failure say the region is unwell (as opposed to refusing one request)?"""
    return isinstance(exc, BackendUnavailable | BackendTimeout) and not isinstance(exc, CircuitOpen)


def _throttled(exc: BrokerError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
        THROTTLED
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Remote:
    """One EC2 instance as the inventory saw it."""

    ref: str
    our_id: str | None
    state: str
    reason_code: str
    reason: str
    private_ip: str | None
    public_ip: str | None
    instance_type: str
    zone: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unmanaged:
    """An instance carrying our broker's tag that no record of ours watches."""

    ref: str
    instance_id: str | None
    state: str
    instance_type: str


def parse_instance(raw: Mapping[str, Any], our_id: str | None = None) -> Remote:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", ())}
    if our_id is None:
        ids = batching.ids_from_tags(tags)
        index = int(raw.get("AmiLaunchIndex", 0))
        our_id = ids[index] if 0 <= index < len(ids) else None
    reason = raw.get("StateReason") or {}
    return Remote(
        ref=str(raw["InstanceId"]),
        our_id=our_id,
        state=str(raw.get("State", {}).get("Name", "")),
        reason_code=str(reason.get("Code", "")),
        reason=str(reason.get("Message", "")),
        private_ip=raw.get("PrivateIpAddress") or None,
        public_ip=raw.get("PublicIpAddress") or None,
        instance_type=str(raw.get("InstanceType", "")),
        zone=str(raw.get("Placement", {}).get("AvailabilityZone", "")),
    )


def _placement(remote: Remote) -> Placement:
    state = to_state(remote.state)
    return Placement(
        ref=remote.ref,
        state=state if state is not State.UNKNOWN else State.BOOT,
        private_ip=remote.private_ip,
        public_ip=remote.public_ip,
    )


def _broker_id(config: TargetConfig) -> str:
    given = config.settings.get("broker_id")
    if given:
        return str(given)
    path = Path(config.data_dir) / "ec2-broker-id"
    with contextlib.suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
    path.parent.mkdir(parents=True, exist_ok=True)
    made = f"cb-{uuid.uuid4().hex[:16]}"
    path.write_text(made + "\n")
    return made


class Ec2Backend:
    kind: ClassVar[str] = "ec2"

    def __init__(self, config: TargetConfig) -> None:
        s = config.settings
        self.config = config
        self.name = config.name
        self.region = str(s.get("region", ""))
        self.endpoint = str(s["endpoint"]) if s.get("endpoint") else None
        self.broker_id = _broker_id(config)
        self.threads = int(s.get("threads", 8))
        self.call_timeout = float(s.get("call_timeout", 60.0))
        self.max_attempts = int(s.get("max_attempts", 5))
        self.page_size = int(s.get("page_size", 1000))
        self.observe_reuse = float(s.get("observe_reuse", 2.0))
        self.grace = float(s.get("grace", 60.0))
        self.retry_base = float(s.get("retry_base", 0.2))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"ec2-{config.name}")
        self._limits = RegionLimits(s.get("rate_limits"), start=time.monotonic())
        self._breaker = CircuitBreaker(
            name=f"EC2 {self.region} ({config.name})",
            threshold=int(s.get("breaker_threshold", 5)),
            cooldown=float(s.get("breaker_cooldown", 30.0)),
        )
        self._session: Any = None
        self._clients: dict[bool, Any] = {}
        self._client_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # HTTP requests sent, by EC2 action (retries too)
        self._batcher: Coalescer[RunKey, str, Placement] = Coalescer(
            self._run_batch,
            window=float(s.get("batch_window", 0.05)),
            max_size=int(s.get("batch_max", 50)),
        )
        self._inventory: dict[str, Remote] = {}
        self._inventory_at: float | None = None
        self._refreshing: asyncio.Future[dict[str, Remote]] | None = None
        self._known: dict[str, Remote] = {}  # our id -> its instance
        self._inflight: dict[str, asyncio.Future[Placement]] = {}
        self._inflight_types: dict[str, str] = {}
        self._suspect: set[str] = set()
        self._touched: dict[str, float] = {}  # EC2 ref -> when we launched or acted on it
        self._unmanaged: list[Unmanaged] = []
        self._unmanaged_prev: set[str] = set()
        self.lost: dict[str, str] = {}  # EC2 ref -> why it is gone (ended outside the broker)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    async def validate(config: TargetConfig) -> None:
        s = config.settings
        if not s.get("region"):
            raise InvalidRequest("an EC2 region target needs --region", field="region")
        if not config.secret.get("access_key") or not config.secret.get("secret_key"):
            raise InvalidRequest(
                "an EC2 region target needs --access-key and --secret", field="secret"
            )
        endpoint = s.get("endpoint")
        if endpoint and not str(endpoint).startswith(("http://", "https://")):
            raise InvalidRequest("--endpoint must be an http:// or https:// URL", field="endpoint")
        for name in ("image_map", "flavor_map", "key_map", "security_group_map", "prices"):
            if not isinstance(s.get(name) or {}, Mapping):
                raise InvalidRequest(f"settings['{name}'] must be a mapping", field=name)
        try:
            RegionLimits(s.get("rate_limits"))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"settings['rate_limits']: {exc}", field="rate_limits") from exc
        backend = Ec2Backend(config)
        try:
            await backend._call("DescribeAvailabilityZones", {})
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
                if self._session is None:
                    self._session = boto3.session.Session(
                        aws_access_key_id=str(self.config.secret.get("access_key", "")),
                        aws_secret_access_key=str(self.config.secret.get("secret_key", "")),
                        region_name=self.region,
                    )
                session = self._session
                attempts = 1 if creating else self.max_attempts
                client = session.client(
                    "ec2",
                    endpoint_url=self.endpoint,
                    config=Config(
                        retries={"mode": "adaptive", "total_max_attempts": attempts},
                        connect_timeout=float(s.get("connect_timeout", 5.0)),
                        read_timeout=float(s.get("read_timeout", 20.0)),
                        max_pool_connections=self.threads,
                        user_agent_extra="cloudbroker",
                    ),
                )
                client.meta.events.register("before-send.ec2", self._count)
                self._clients[creating] = client
        return client

    def _count(self, event_name: str = "", **_: Any) -> None:
        with self._count_lock:
            self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """In a worker thread: one boto3 call, its errors translated."""
        client = self._client(operation in CREATING)
        try:
            result: dict[str, Any] = getattr(client, METHODS[operation])(**params)
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, f"{operation} in {self.region}") from exc
        except Exception as exc:  # unparsable answers from a broken endpoint
            raise translate(exc, f"{operation} in {self.region}") from exc
        return result

    async def _call(
        self, operation: str, params: dict[str, Any], *, count: int = 0
    ) -> dict[str, Any]:
        """The gate every EC2 call goes through: breaker, rate limits, pool, timeout."""
        now = time.monotonic()
        if not self._breaker.allow(now):
            raise CircuitOpen(self._breaker.why(now))
        wait = self._limits.reserve(operation, count, now)
        if wait > 0:
            await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._pool, functools.partial(self._invoke, operation, params))
        try:
            result = await asyncio.wait_for(job, self.call_timeout)
        except TimeoutError as exc:
            err = BackendTimeout(
                f"{operation} in {self.region} did not finish in {self.call_timeout:g}s"
            )
            self._breaker.failure(str(err), time.monotonic())
            raise err from exc
        except BrokerError as exc:
            if _outage(exc):
                self._breaker.failure(str(exc), time.monotonic())
            elif not isinstance(exc, CircuitOpen):
                self._breaker.success()  # the region answered; it refused this one request
            raise
        self._breaker.success()
        return result

    def _backoff(self, attempt: int) -> float:
        return float(min(5.0, self.retry_base * 2.0**attempt) * random.uniform(0.5, 1.0))

    async def aclose(self) -> None:
        await self._batcher.aclose()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- inventory ------------------------------------------------------------------------

    async def _refresh(self) -> dict[str, Remote]:
        """A fresh inventory; concurrent callers share one paginated DescribeInstances."""
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
            fut.exception()  # retrieved here; awaiting callers still see it

    async def _fetch_inventory(self) -> dict[str, Remote]:
        params: dict[str, Any] = {
            "Filters": [{"Name": f"tag:{TAG_BROKER}", "Values": [self.broker_id]}],
            "MaxResults": self.page_size,
        }
        found: dict[str, Remote] = {}
        while True:  # a failed page fails the whole refresh: a partial view would "lose" instances
            page = await self._call("DescribeInstances", params)
            for reservation in page.get("Reservations", ()):
                for raw in reservation.get("Instances", ()):
                    remote = parse_instance(raw)
                    found[remote.ref] = remote
            token = page.get("NextToken")
            if not token:
                break
            params = {**params, "NextToken": token}
        self._inventory = found
        self._inventory_at = time.monotonic()
        for remote in found.values():
            if remote.our_id is not None:
                known = self._known.get(remote.our_id)
                if known is None or known.ref == remote.ref or known.state in GONE:
                    self._known[remote.our_id] = remote
        return found

    async def _recent_inventory(self, max_age: float) -> dict[str, Remote]:
        at = self._inventory_at
        if at is not None and time.monotonic() - at <= max_age and self._refreshing is None:
            return self._inventory
        return await self._refresh()

    # --- monitoring -----------------------------------------------------------------------

    async def probe(self) -> TargetProbe:
        """Capacity as the operator declares it; the inventory refresh is the health check."""
        inventory = await self._refresh()
        s = self.config.settings
        max_instances = int(s.get("max_instances", 20))
        live = [r for r in inventory.values() if r.state not in GONE]
        cpu = int(s.get("max_vcpus", max_instances * 8))
        memory = int(s.get("max_memory_mb", max_instances * 32768))
        disk = int(s.get("max_disk_gb", max_instances * 100))
        if len(live) >= max_instances or self._over_budget(self._cheapest()):
            cpu = memory = disk = 0  # placement sees a full region
        return TargetProbe(
            total_cpu=cpu,
            total_memory_mb=memory,
            total_disk_gb=disk,
            free_memory_mb=memory,
            free_disk_gb=float(disk),
            running=sum(1 for r in live if r.state in BILLED),
            hypervisor="ec2",
        )

    async def observe(self, refs: Sequence[str]) -> list[Observed]:
        inventory = await self._recent_inventory(self.observe_reuse)
        now = time.monotonic()
        out: list[Observed] = []
        for ref in refs:
            remote = inventory.get(ref)
            if remote is None:
                if now - self._touched.get(ref, -1e9) < self.grace:  # not visible yet
                    out.append(Observed(ref, State.UNKNOWN, "not yet listed by EC2"))
                continue  # left out: the monitor marks it lost
            if remote.state in GONE:
                if launch_failed(remote.state, remote.reason_code):
                    why = f"EC2 could not start it: {remote.reason or remote.reason_code}"
                    out.append(Observed(ref, State.FAILED, why, instance_id=remote.our_id))
                else:
                    why = remote.reason or remote.state
                    self.lost[ref] = f"ended outside the broker: {why}"
                    log.warning("EC2 instance %s in %s %s", ref, self.region, self.lost[ref])
                continue
            out.append(self._observed(remote, f"ec2: {remote.state}"))
        out.extend(self._find_unmanaged(inventory, set(refs), now))
        return out

    def _observed(self, remote: Remote, reason: str) -> Observed:
        return Observed(
            ref=remote.ref,
            state=to_state(remote.state),
            reason=reason,
            private_ip=remote.private_ip,
            public_ip=remote.public_ip,
            instance_id=remote.our_id,
        )

    def _find_unmanaged(
        self, inventory: Mapping[str, Remote], asked: set[str], now: float
    ) -> list[Observed]:
        busy = set(self._inflight)
        candidates = {
            ref
            for ref, r in inventory.items()
            if r.state not in GONE
            and ref not in asked
            and now - self._touched.get(ref, -1e9) >= self.grace
            and (r.our_id is None or r.our_id not in busy)
        }
        confirmed = sorted(candidates & self._unmanaged_prev)
        self._unmanaged_prev = candidates
        self._unmanaged = [
            Unmanaged(r.ref, r.our_id, r.state, r.instance_type)
            for r in (inventory[ref] for ref in confirmed)
        ]
        if self._unmanaged:
            log.warning(
                "%d instance(s) in %s carry this broker's tag but no record: %s",
                len(confirmed),
                self.region,
                ", ".join(confirmed[:20]),
            )
        return [
            self._observed(
                inventory[ref], "unmanaged: carries this broker's tag but no record watches it"
            )
            for ref in confirmed
        ]

    def unmanaged(self) -> list[Unmanaged]:
        """The unmanaged instances found by the last observe."""
        return list(self._unmanaged)

    def circuit(self) -> str:
        """The region's circuit state and, when not closed, why."""
        if self._breaker.state == "closed":
            return "closed"
        return self._breaker.why(time.monotonic())

    async def console(self, ref: str) -> str:
        got = await self._call("GetConsoleOutput", {"InstanceId": ref})
        return str(got.get("Output") or "")  # botocore has already decoded EC2's base64

    # --- cost -----------------------------------------------------------------------------

    def price(self, instance_type: str) -> float:
        prices = self.config.settings.get("prices") or {}
        return float(prices.get(instance_type, self.config.settings.get("default_price", 0.0)))

    def spend_per_hour(self) -> float:
        """What the instances of ours that EC2 bills now, plus launches in flight, cost an hour."""
        billed = sum(self.price(r.instance_type) for r in self._known.values() if r.state in BILLED)
        return billed + sum(self.price(t) for t in self._inflight_types.values())

    def _cheapest(self) -> float:
        prices = self.config.settings.get("prices") or {}
        default = float(self.config.settings.get("default_price", 0.0))
        return min([float(p) for p in prices.values()] or [default])

    def _over_budget(self, adding: float) -> bool:
        budget = self.config.settings.get("budget_per_hour")
        return budget is not None and self.spend_per_hour() + adding > float(budget) + 1e-9

    # --- launch ---------------------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> Placement:
        key = batching.run_key(
            spec, self.name, self.region, {**self.config.settings, **spec.target_settings}
        )
        rid = spec.instance_id
        pending = self._inflight.get(rid)
        if pending is not None:  # an earlier call's request is still out: share its answer
            return await asyncio.shield(pending)
        if rid in self._suspect or self._inventory_at is None:
            await self._refresh()  # look before (re)launching: EC2 may have acted already
        known = self._known.get(rid)
        if known is not None and known.state not in GONE:
            self._suspect.discard(rid)
            return _placement(known)
        if rid in self._inflight:  # another caller started it while we looked
            return await asyncio.shield(self._inflight[rid])
        live = sum(1 for r in self._known.values() if r.state not in GONE) + len(self._inflight)
        max_instances = int(self.config.settings.get("max_instances", 20))
        if live >= max_instances:
            raise NoCapacity(f"{self.name} already runs its maximum of {max_instances} instances")
        if self._over_budget(self.price(key.instance_type)):
            raise NoCapacity(
                f"the burst budget of {self.name} "
                f"({float(self.config.settings['budget_per_hour']):g} USD/h) is spent"
            )
        fut = self._batcher.submit(key, rid)
        self._inflight[rid] = fut
        self._inflight_types[rid] = key.instance_type
        fut.add_done_callback(functools.partial(self._launched, rid))
        return await asyncio.shield(fut)

    def _launched(self, rid: str, fut: asyncio.Future[Placement]) -> None:
        if self._inflight.get(rid) is fut:
            del self._inflight[rid]
            self._inflight_types.pop(rid, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that gave up must not make asyncio complain

    async def _run_batch(self, key: RunKey, ids: list[str]) -> list[Placement | BaseException]:
        params = batching.run_params(key, self.broker_id, ids)
        try:
            made = await self._create("RunInstances", params, TAG_BATCH, len(ids))
        except BrokerError as exc:
            if not isinstance(exc, InvalidRequest | NotFound | QuotaExceeded | NoCapacity):
                self._suspect.update(ids)  # EC2 may have acted: look before the next attempt
            return [exc] * len(ids)
        now = time.monotonic()
        by_index = {int(raw.get("AmiLaunchIndex", 0)): raw for raw in made}
        out: list[Placement | BaseException] = []
        for index, rid in enumerate(ids):
            raw = by_index.get(index)
            if raw is None:
                out.append(NoCapacity(f"EC2 started {len(made)} of the {len(ids)} instances asked"))
                continue
            remote = parse_instance(raw, rid)
            self._known[rid] = remote
            self._inventory[remote.ref] = remote  # so an observe reusing it sees the launch
            self._touched[remote.ref] = now
            self._suspect.discard(rid)
            out.append(_placement(remote))
        return out

    async def _create(
        self, operation: str, params: dict[str, Any], tag: str, count: int
    ) -> list[dict[str, Any]]:
        """RunInstances or CreateVolume, at most once in effect.

        Throttling is retried at once (EC2 did nothing). After an ambiguous failure (5xx, no
        answer, a dropped connection) we look for what the request made, by its tag, and only
        when nothing is there repeat it, with the same ClientToken.
        """
        token = str(params["ClientToken"])
        last: BrokerError | None = None
        must_look = False
        for attempt in range(self.max_attempts):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            if must_look:  # never send again before knowing the last request did nothing
                try:
                    found = await self._made_by(operation, tag, token)
                except BrokerError as exc:
                    last = exc
                    continue
                if found:
                    log.info("%s %s had acted despite the error; adopting", operation, token)
                    return found
                must_look = False
            try:
                answer = await self._call(operation, params, count=count)
            except CircuitOpen:
                raise
            except BrokerError as exc:
                last = exc
                if _throttled(exc):
                    continue
                if not _outage(exc):
                    raise
                must_look = True
                continue
            if operation == "RunInstances":
                return list(answer.get("Instances", ()))
            return [answer]
        assert last is not None
        raise last

    async def _made_by(self, operation: str, tag: str, value: str) -> list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{TAG_BROKER}", "Values": [self.broker_id]},
            {"Name": f"tag:{tag}", "Values": [value]},
        ]
        if operation == "RunInstances":
            got = await self._call("DescribeInstances", {"Filters": filters})
            return [i for r in got.get("Reservations", ()) for i in r.get("Instances", ())]
        got = await self._call("DescribeVolumes", {"Filters": filters})
        return list(got.get("Volumes", ()))

    # --- actions --------------------------------------------------------------------------

    async def act(self, ref: str, action: Action, *, force: bool = False) -> Observed | None:
        entry = ACTIONS.get(action)
        if entry is None:
            raise Unsupported(f"EC2 instances cannot {action.value}")
        operation, extra, answer_key = entry
        params: dict[str, Any] = {"InstanceIds": [ref], **extra}
        if action is Action.STOP and force:
            params["Force"] = True
        self._touched[ref] = time.monotonic()
        try:
            got = await self._call(operation, params, count=1)
        except NotFound:
            if action is Action.TERMINATE:
                return None  # already gone
            raise
        if answer_key is None:
            return Observed(ref, State.RUNNING, "ec2: rebooting")
        name = str(got[answer_key][0]["CurrentState"]["Name"])
        self._note_state(ref, name)
        if action is Action.TERMINATE:
            return None
        return Observed(ref, to_state(name), f"ec2: {name}")

    def _note_state(self, ref: str, name: str) -> None:
        """Keep the reused inventory in step with what an action just answered."""
        remote = self._inventory.get(ref)
        if remote is not None:
            remote = dataclasses.replace(remote, state=name)
            self._inventory[ref] = remote
            if remote.our_id is not None and remote.our_id in self._known:
                self._known[remote.our_id] = remote

    # --- volumes --------------------------------------------------------------------------

    async def attach_volume(self, ref: str, volume: VolumeSpec) -> str:
        """Make the EBS volume in the instance's zone on first use, then attach it there."""
        vref = volume.backend_ref
        if vref is None:
            vref = await self.create_volume(volume.volume_id, volume.size_gb, await self._zone(ref))
            await self._until_available(vref)
        await self.attach_remote(vref, ref, _ebs_device(volume.device))
        return vref

    async def detach_volume(self, ref: str, volume: VolumeSpec, *, force: bool = False) -> None:
        if volume.backend_ref is not None:
            await self.detach_remote(volume.backend_ref, ref, force=force)

    async def delete_volume(self, volume: VolumeSpec) -> None:
        if volume.backend_ref is not None:
            await self.delete_remote(volume.backend_ref)

    async def _zone(self, ref: str) -> str:
        got = await self._call("DescribeInstances", {"InstanceIds": [ref]})
        for reservation in got.get("Reservations", ()):
            for inst in reservation.get("Instances", ()):
                return str(inst["Placement"]["AvailabilityZone"])
        raise NotFound(f"EC2 has no instance {ref} in {self.region}")

    async def _until_available(self, vref: str, tries: int = 30) -> None:
        for _ in range(tries):
            got = await self._call("DescribeVolumes", {"VolumeIds": [vref]})
            if any(v.get("State") == "available" for v in got.get("Volumes", ())):
                return
            await asyncio.sleep(1.0)
        raise BackendTimeout(f"the EBS volume {vref} did not become available")

    async def create_volume(self, volume_id: str, size_gb: int, zone: str | None = None) -> str:
        """A volume in this region tagged with our id; idempotent per ``volume_id``."""
        if zone is None:
            zone = str(self.config.settings.get("zone") or f"{self.region}a")
        existing = await self._made_by("CreateVolume", TAG_VOLUME, volume_id)
        live = [v for v in existing if v.get("State") not in ("deleting", "deleted", "error")]
        if live:
            return str(live[0]["VolumeId"])
        tags = [
            {"Key": TAG_BROKER, "Value": self.broker_id},
            {"Key": TAG_VOLUME, "Value": volume_id},
        ]
        params = {
            "AvailabilityZone": zone,
            "Size": int(size_gb),
            "ClientToken": batching.batch_token(self.broker_id, [volume_id]),
            "TagSpecifications": [{"ResourceType": "volume", "Tags": tags}],
        }
        made = await self._create("CreateVolume", params, TAG_VOLUME, 0)
        return str(made[0]["VolumeId"])

    async def attach_remote(self, volume_ref: str, instance_ref: str, device: str) -> str:
        params = {"VolumeId": volume_ref, "InstanceId": instance_ref, "Device": device}
        try:
            got = await self._call("AttachVolume", params)
        except InvalidState:
            if await self._attached_to(volume_ref) == instance_ref:
                return "attached"  # a retried attach that had worked
            raise
        return str(got.get("State", "attaching"))

    async def detach_remote(
        self, volume_ref: str, instance_ref: str | None = None, *, force: bool = False
    ) -> str:
        if instance_ref is None:
            instance_ref = await self._attached_to(volume_ref)
            if instance_ref is None:
                return "detached"
        params = {"VolumeId": volume_ref, "InstanceId": instance_ref, "Force": force}
        try:
            got = await self._call("DetachVolume", params)
        except (InvalidState, BackendUnavailable):
            with contextlib.suppress(BrokerError):
                if await self._attached_to(volume_ref) is None:
                    return "detached"  # a retried detach that had worked
            raise
        return str(got.get("State", "detaching"))

    async def delete_remote(self, volume_ref: str) -> None:
        with contextlib.suppress(NotFound):
            await self._call("DeleteVolume", {"VolumeId": volume_ref})

    async def _attached_to(self, volume_ref: str) -> str | None:
        got = await self._call("DescribeVolumes", {"VolumeIds": [volume_ref]})
        for volume in got.get("Volumes", ()):
            for att in volume.get("Attachments", ()):
                if att.get("State") in ("attaching", "attached"):
                    return str(att["InstanceId"])
        return None


def _ebs_device(device: str) -> str:
    """EC2 names attachment points /dev/sd* or /dev/xvd*; our /dev/vdX becomes /dev/sdX."""
    return "/dev/sd" + device.removeprefix("/dev/vd") if device.startswith("/dev/vd") else device
