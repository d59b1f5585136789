"""What crosses a federation link: the tags, the client token, the states and the capacity document.

Decides how one site marks an instance it forwards to a peer, and how a receiving site reads
those marks back. Every forwarded instance carries three tags on the peer:

- ``cloudbroker:origin-instance`` = our instance id (the peer's record points back at ours),
- ``cloudbroker:origin-site`` = our site id (one DescribeInstances filtered by it lists all of
  ours on that peer),
- ``cloudbroker:hops`` = how many links the request has crossed, ours included.

The receiving site turns the last two into ``LaunchRequest.hops`` and ``origin`` with
:func:`hops_from_tags`, and placement's hop limit then never forwards such an instance again.
The ClientToken is derived from our site and instance id, so a resent RunInstances is the same
request and the peer answers it with the instance it already made.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from broker.federation import (  # the receiving side's reading of these marks lives in the core
    MAX_HOPS_TAG,
    TAG_HOPS,
    TAG_ORIGIN_INSTANCE,
    TAG_ORIGIN_SITE,
    hops_from_tags,
)
from broker.states import State

__all__ = ["MAX_HOPS_TAG", "TAG_HOPS", "TAG_ORIGIN_INSTANCE", "TAG_ORIGIN_SITE", "hops_from_tags"]

#: the peer's EC2 state name -> our state (a terminated instance is read with its reason).
STATE_MAP: Final[Mapping[str, State]] = {
    "pending": State.BOOT,
    "running": State.RUNNING,
    "stopping": State.SHUTDOWN,
    "stopped": State.POWEROFF,
    "shutting-down": State.EPILOG,
    "terminated": State.DONE,
}
GONE: Final = frozenset({"shutting-down", "terminated"})


def client_token(site: str, instance_id: str) -> str:
    """The ClientToken of our instance's RunInstances on any peer (64 characters at most)."""
    digest = hashlib.sha256(f"{site}/{instance_id}".encode()).hexdigest()[:24]
    return f"cb-{instance_id}-{digest}"[:64]


def launch_tags(
    tags: Mapping[str, str], *, instance_id: str, site: str, hops: int
) -> list[dict[str, str]]:
    """The peer-side tags of a forwarded instance: the user's, then our three marks.

    ``hops`` is how many links the instance had crossed when it reached us; the peer sees one
    more. Marks a user set on the instance are replaced, never trusted.
    """
    out = {k: v for k, v in tags.items() if not k.startswith("cloudbroker:")}
    out[TAG_ORIGIN_INSTANCE] = instance_id
    out[TAG_ORIGIN_SITE] = site
    out[TAG_HOPS] = str(hops + 1)
    return [{"Key": k, "Value": v} for k, v in out.items()]


def refuses_forward(hops: int, max_hops: int, origin: str, peer_site: str) -> str:
    """Why an instance must not be forwarded to ``peer_site`` ("" when it may be)."""
    if hops >= max_hops:
        return (
            f"the instance came over {hops} federation link(s) already; "
            f"it is not forwarded again (limit {max_hops})"
        )
    if origin and peer_site and origin == peer_site:
        return f"the instance came from {peer_site}; it is not sent back there"
    return ""


@dataclasses.dataclass(frozen=True, slots=True)
class Remote:
    """One instance of ours as the peer's DescribeInstances shows it."""

    ref: str
    our_id: str | None
    state: str
    reason_code: str
    reason: str
    private_ip: str | None
    public_ip: str | None
    instance_type: str


def parse_instance(raw: Mapping[str, Any]) -> Remote:
    tags = {str(t.get("Key")): str(t.get("Value")) for t in raw.get("Tags", ())}
    reason = raw.get("StateReason") or {}
    return Remote(
        ref=str(raw["InstanceId"]),
        our_id=tags.get(TAG_ORIGIN_INSTANCE),
        state=str((raw.get("State") or {}).get("Name", "")),
        reason_code=str(reason.get("Code", "")),
        reason=str(reason.get("Message", "")),
        private_ip=raw.get("PrivateIpAddress") or None,
        public_ip=raw.get("PublicIpAddress") or None,
        instance_type=str(raw.get("InstanceType", "")),
    )


def to_state(remote: Remote) -> State:
    """Our state for what the peer shows; a terminated instance with a Server.* reason failed."""
    if remote.state == "terminated" and remote.reason_code.startswith("Server."):
        return State.FAILED
    return STATE_MAP.get(remote.state, State.UNKNOWN)


@dataclasses.dataclass(frozen=True, slots=True)
class FlavorRoom:
    name: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    free: int


@dataclasses.dataclass(frozen=True, slots=True)
class CapacityDoc:
    """The peer's capacity document (``GET /api/v1/capacity``), as this site reads it."""

    site: str
    region: str
    free_vcpus: int
    free_memory_mb: int
    free_disk_gb: int
    flavors: Sequence[FlavorRoom]
    images: Mapping[str, str]  # peer image id -> name

    def image_named(self, name: str) -> str | None:
        found = sorted(i for i, n in self.images.items() if n == name)
        return found[0] if found else None

    def flavor(self, name: str) -> FlavorRoom | None:
        return next((f for f in self.flavors if f.name == name), None)


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{key}' is not a number")
    return int(value)


def parse_capacity(data: Any) -> CapacityDoc:
    """Read a capacity document; raise ValueError naming what is malformed."""
    if not isinstance(data, Mapping):
        raise ValueError("the capacity document is not a JSON object")
    free = data.get("free")
    if not isinstance(free, Mapping):
        raise ValueError("the capacity document has no 'free' object")
    flavors = []
    for item in data.get("flavors") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ValueError("a flavor entry has no name")
        flavors.append(
            FlavorRoom(
                item["name"],
                _int(item, "vcpus"),
                _int(item, "memory_mb"),
                _int(item, "disk_gb"),
                _int(item, "free"),
            )
        )
    images = {}
    for item in data.get("images") or ():
        if isinstance(item, Mapping) and isinstance(item.get("id"), str):
            images[item["id"]] = str(item.get("name", ""))
    return CapacityDoc(
        site=str(data.get("site", "")),
        region=str(data.get("region", "")),
        free_vcpus=_int(free, "vcpus"),
        free_memory_mb=_int(free, "memory_mb"),
        free_disk_gb=_int(free, "disk_gb"),
        flavors=tuple(flavors),
        images=images,
    )
