"""What one RunInstances request carries, and how concurrent launches share one.

**Mapping** a :class:`LaunchSpec` to EC2 words, first match wins:

- AMI: the image's own mapping for this target by name (``Image.mappings[target_name]``), then for
  the region (``Image.mappings["ec2:REGION"]``), then the operator's ``settings["image_map"]``
  keyed by our image id or ``"*"`` (:func:`broker.mappings.mapped_name`, as placement reads it).
  No match refuses the launch (nothing is sent).
- instance type: ``settings["flavor_map"]`` the same way, else the flavor's own name (ours are
  EC2's).
- key pair: ``settings["key_map"][key_name]``, else ``key_map["*"]``, else none: our key pairs do
  not exist in the region unless the operator imported and mapped them.
- security groups: each of ours through ``settings["security_group_map"]`` (a group id or a list),
  unmapped ones dropped; none left: ``security_group_map["*"]``, else the VPC's default group.
- subnet: ``settings["subnet"]``, else the region's default.

**Coalescing**: launches with the same :class:`RunKey` (same AMI, type, key, groups, subnet and
user data) arriving within ``window`` seconds go out as one RunInstances for N instances (at most
``max_size``), MinCount=MaxCount=N: all or nothing, so the id list below stays whole (and moto's
server launches MinCount, ignoring MaxCount). A batch EC2 cannot fit fails as a whole and each
launch in it is retried by the scheduler. EC2 can only tag every instance of a request alike,
so each instance finds its own id without another call: the request's tags list our ids in order
(``cloudbroker:ids``, split over ``cloudbroker:ids:2``... when long) and EC2 gives every instance
its ``AmiLaunchIndex``, its position in that list. The same tags go on the root volumes. The
ClientToken, also kept as the ``cloudbroker:batch`` tag, is derived from the broker id and the
ordered ids, so a retried request is the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from broker.errors import InvalidRequest
from broker.mappings import mapped_name
from broker.protocols import LaunchSpec

TAG_BROKER = "cloudbroker:broker"
TAG_BATCH = "cloudbroker:batch"
TAG_IDS = "cloudbroker:ids"
TAG_VOLUME = "cloudbroker:volume-id"
IDS_PER_TAG = 12  # 12 ids of 19 characters and their commas stay under EC2's 256


@dataclasses.dataclass(frozen=True, slots=True)
class RunKey:
    """Everything that must be equal for launches to share one RunInstances request."""

    image: str
    instance_type: str
    key_name: str | None
    groups: tuple[str, ...]
    subnet: str | None
    user_data: bytes | None


def _map(settings: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = settings.get(name) or {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"settings['{name}'] must be a mapping", field=name)
    return value


def run_key(spec: LaunchSpec, target_name: str, region: str, settings: Mapping[str, Any]) -> RunKey:
    """The EC2 parameters for ``spec`` (see the module docstring for the precedence)."""
    image = (
        spec.image_mappings.get(target_name)
        or spec.image_mappings.get(f"ec2:{region}")
        or mapped_name(_map(settings, "image_map"), spec.image_id)
    )
    if not isinstance(image, str) or not image.startswith("ami-"):
        raise InvalidRequest(
            f"the image {spec.image_id} has no AMI for {target_name} (ec2:{region}): add one to "
            "the image's mappings or to the target's image_map",
            field="image_id",
        )
    flavor = mapped_name(_map(settings, "flavor_map"), spec.flavor) or spec.flavor
    keys = _map(settings, "key_map")
    key = keys.get(spec.key_name or "") or keys.get("*")
    group_map = _map(settings, "security_group_map")
    groups: list[str] = []
    for group in spec.security_groups:
        groups.extend(_as_list(group_map.get(group)))
    if not groups:
        groups = _as_list(group_map.get("*"))
    subnet = settings.get("subnet")
    return RunKey(
        image=image,
        instance_type=flavor,
        key_name=str(key) if key else None,
        groups=tuple(dict.fromkeys(groups)),
        subnet=str(subnet) if subnet else None,
        user_data=spec.user_data or None,
    )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def batch_token(broker_id: str, ids: Sequence[str]) -> str:
    """The ClientToken (at most 64 ASCII characters) for a request launching ``ids``."""
    digest = hashlib.sha256("|".join([broker_id, *ids]).encode()).hexdigest()
    return f"cb-{digest[:40]}"


def id_tags(broker_id: str, token: str, ids: Sequence[str]) -> list[dict[str, str]]:
    tags = [{"Key": TAG_BROKER, "Value": broker_id}, {"Key": TAG_BATCH, "Value": token}]
    for n, start in enumerate(range(0, len(ids), IDS_PER_TAG), 1):
        key = TAG_IDS if n == 1 else f"{TAG_IDS}:{n}"
        tags.append({"Key": key, "Value": ",".join(ids[start : start + IDS_PER_TAG])})
    return tags


def ids_from_tags(tags: Mapping[str, str]) -> list[str]:
    """Our ids in launch-index order, read back from an instance's tags."""
    out: list[str] = []
    n = 1
    while True:
        value = tags.get(TAG_IDS if n == 1 else f"{TAG_IDS}:{n}")
        if value is None:
            return out
        out.extend(v for v in value.split(",") if v)
        n += 1


def run_params(key: RunKey, broker_id: str, ids: Sequence[str]) -> dict[str, Any]:
    """The RunInstances parameters that launch ``ids`` (in this order) with ``key``."""
    token = batch_token(broker_id, ids)
    tags = id_tags(broker_id, token, ids)
    params: dict[str, Any] = {
        "ImageId": key.image,
        "InstanceType": key.instance_type,
        "MinCount": len(ids),
        "MaxCount": len(ids),
        "ClientToken": token,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if key.key_name:
        params["KeyName"] = key.key_name
    if key.groups:
        params["SecurityGroupIds"] = list(key.groups)
    if key.subnet:
        params["SubnetId"] = key.subnet
    if key.user_data:
        params["UserData"] = key.user_data  # botocore base64-encodes it
    return params


K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[K, T, R]):
    """Groups items submitted with the same key within ``window`` seconds into one ``run`` call.

    ``run(key, items)`` returns one result per item, in order: a value or an exception for that
    item alone. A submitter that is cancelled does not cancel the batch (its result is still
    delivered to :meth:`result_for` callers), so work EC2 may have done is never orphaned.
    """

    def __init__(
        self,
        run: Callable[[K, list[T]], Awaitable[list[R | BaseException]]],
        *,
        window: float,
        max_size: int,
    ) -> None:
        self._run = run
        self._window = window
        self._max = max(1, max_size)
        self._open: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: K, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        group = self._open.setdefault(key, [])
        group.append((item, fut))
        if len(group) >= self._max:
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = loop.call_later(self._window, self._flush, key)
        return fut

    def _flush(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        group = self._open.pop(key, [])
        if group:
            task = asyncio.get_running_loop().create_task(self._deliver(key, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, key: K, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run(key, [item for item, _ in group])
        except BaseException as exc:  # every waiter learns of it, then cancellation goes on
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), result in zip(group, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for group in self._open.values():
            for _, fut in group:
                fut.cancel()
        self._open.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
