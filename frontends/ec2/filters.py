"""Decides how EC2 ``Filter.N`` parameters become the service's filters, per resource.

Each resource has one table of the filter names it understands (``tag:KEY`` and ``tag-key``
work on every resource). An unknown name is refused, never ignored. Values are exact; ``*``
and ``?`` (EC2's wildcards) are refused as unsupported unless escaped with a backslash, so a
filter never silently matches less than the client meant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from broker.errors import Unsupported
from broker.service.common import TagFilter
from broker.states import State
from frontends.ec2.errors import combination, invalid
from frontends.ec2.states import BY_NAME, EC2_STATE

#: EC2 filter name -> field of the service's filter dataclass holding its values
INSTANCE_FIELDS: Mapping[str, str] = {
    "instance-id": "ids",
    "instance-type": "flavors",
    "image-id": "image_ids",
    "availability-zone": "zones",
    "reservation-id": "reservation_ids",
    "key-name": "key_names",
    "private-ip-address": "private_ips",
}

IMAGE_FIELDS: Mapping[str, str] = {
    "image-id": "ids",
    "name": "names",
    "state": "states",
    "architecture": "architectures",
    "owner-id": "owners",
}


KEY_PAIR_FIELDS: Mapping[str, str] = {
    "key-name": "key_names",
    "fingerprint": "fingerprints",
    "key-type": "key_types",
}

SECURITY_GROUP_FIELDS: Mapping[str, str] = {
    "group-id": "group_ids",
    "group-name": "group_names",
    "description": "descriptions",
}

VOLUME_FIELDS: Mapping[str, str] = {
    "status": "states",
    "availability-zone": "zones",
    "attachment.instance-id": "instance_ids",
    "snapshot-id": "snapshot_ids",
}

SNAPSHOT_FIELDS: Mapping[str, str] = {
    "volume-id": "volume_ids",
    "status": "states",
    "owner-id": "owners",
}

ADDRESS_FIELDS: Mapping[str, str] = {
    "instance-id": "instance_ids",
    "association-id": "association_ids",
}

TAG_FIELDS: Mapping[str, str] = {
    "resource-id": "resource_ids",
    "resource-type": "resource_types",
    "key": "keys",
    "value": "values",
}


def literal(value: str) -> str:
    """A filter value with EC2's escapes undone; unescaped wildcards are refused."""
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?":
            raise Unsupported(
                f"Filter wildcards ('{ch}') are not supported; give exact values "
                "(escape a literal * or ? with a backslash)."
            )
        else:
            out.append(ch)
    if escaped:
        out.append("\\")
    return "".join(out)


class Collected:
    """Values per service field, tag filters and states gathered from ``Filter.N``."""

    def __init__(self) -> None:
        self.fields: dict[str, tuple[str, ...]] = {}
        self.tags: list[TagFilter] = []
        self.states: tuple[State, ...] | None = None
        self.extra: dict[str, list[str]] = {}
        self.empty = False  # a filter that no resource can pass

    def narrow(self, field: str, values: Sequence[str]) -> None:
        """Add ``values`` for ``field``; a field given twice keeps what both allow."""
        if field in self.fields:
            kept = tuple(v for v in self.fields[field] if v in values)
            self.fields[field] = kept
            self.empty = self.empty or not kept
        else:
            self.fields[field] = tuple(dict.fromkeys(values))

    def narrow_states(self, states: Sequence[State]) -> None:
        kept = (
            tuple(states) if self.states is None else tuple(s for s in self.states if s in states)
        )
        self.states = kept
        self.empty = self.empty or not kept


def _tag(collected: Collected, name: str, values: list[str]) -> bool:
    if name.startswith("tag:"):
        key = name[4:]
        if not key:
            raise invalid("Filter", name, "a tag filter needs a key")
        collected.tags.append(TagFilter(key, tuple(values)))
        return True
    if name == "tag-key":
        if len(values) != 1:
            raise combination("The tag-key filter takes one value here; use one filter per key.")
        collected.tags.append(TagFilter(values[0]))
        return True
    return False


def collect(
    pairs: Sequence[tuple[str, list[str]]],
    fields: Mapping[str, str],
    extra: frozenset[str] = frozenset(),
    states: bool = False,
) -> Collected:
    """Sort ``Filter.N`` pairs into service fields, tags and states, or refuse a name."""
    out = Collected()
    for name, raw in pairs:
        values = [literal(v) for v in raw]
        if name in fields:
            out.narrow(fields[name], values)
        elif _tag(out, name, values):
            continue
        elif states and name == "instance-state-name":
            out.narrow_states([s for v in values for s in BY_NAME.get(v, ())])
        elif states and name == "instance-state-code":
            codes = {v.strip() for v in values}
            out.narrow_states([s for s, (_, c) in EC2_STATE.items() if str(c) in codes])
        elif name in extra:
            out.extra[name] = values
        else:
            raise invalid("Filter", name, "the filter name is not supported")
    return out
