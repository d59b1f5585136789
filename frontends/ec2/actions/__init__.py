"""The registry of EC2 actions: one explicit table from action name to handler.

Each family module keeps its own table; this merges them and refuses a name defined twice.
Nothing is looked up by ``getattr`` on names from the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from frontends.ec2.actions import (
    addresses,
    images,
    instances,
    keypairs,
    regions,
    security_groups,
    tags,
    volumes,
)
from frontends.ec2.protocol import Handler


def _merge(*tables: Mapping[str, Handler]) -> Mapping[str, Handler]:
    merged: dict[str, Handler] = {}
    for table in tables:
        for name, handler in table.items():
            if name in merged:
                raise RuntimeError(f"the EC2 action {name} is registered twice")
            merged[name] = handler
    return MappingProxyType(merged)


ACTIONS: Final = _merge(
    instances.ACTIONS,
    images.ACTIONS,
    regions.ACTIONS,
    keypairs.ACTIONS,
    security_groups.ACTIONS,
    volumes.ACTIONS,
    addresses.ACTIONS,
    tags.ACTIONS,
)
