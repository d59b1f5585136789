"""``cloudbroker peer add|list|show|test|remove``: federation links, over the admin API.

Decides what an operator types to link this site to a peer cloudbroker and to look after the
link. ``peer add`` stores the link as a target (kind and driver ``peer``); the broker checks it
by reaching the peer once with the given key, so wrong credentials are refused there with the
peer's own error. The peer's operator, on their side, made an ordinary user for this site with
the quotas they chose; that user's access key is what ``--access-key``/``--secret`` name.
``peer remove`` refuses while instances run there, unless ``--force`` after the operator has
seen (and confirmed) which instances will be left running on the peer.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from broker.cli import Ctx, fail, pass_ctx, show
from broker.client import AdminClient

PEER_COLUMNS = [
    "name",
    "state",
    "region",
    "url",
    "total_cpu",
    "total_memory_mb",
    "instances",
    "last_seen_at",
]
LEFT_COLUMNS = ["id", "state", "owner_id", "flavor"]


@click.group()
def peer() -> None:
    """Federation links to other cloudbroker sites."""


def _mapping(items: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours or not theirs:
            fail(f"{option} wants OURS=THEIRS, got '{item}'")
        out[ours] = theirs
    return out


def _row(target: dict[str, Any]) -> dict[str, Any]:
    settings = target.get("settings") or {}
    return {
        **target,
        "url": settings.get("url"),
        "admin_url": settings.get("admin_url"),
        "region": settings.get("region"),
        "site": settings.get("site"),
    }


def _peer(client: AdminClient, name: str) -> dict[str, Any]:
    if not name or "/" in name or len(name) > 64:
        fail(f"invalid peer name '{name[:40]}'")
    found: dict[str, Any] = client.call("GET", f"/api/v1/targets/{name}")
    if found.get("kind") != "peer":
        fail(f"'{name}' is a {found.get('kind')} target, not a peer")
    return found


def _instances_on(client: AdminClient, target_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = client.call(
            "GET", "/api/v1/instances", query={"target": target_id, "limit": 1000, "next": token}
        )
        out.extend(i for i in page["instances"] if i["state"] not in ("done", "failed"))
        token = page.get("next")
        if not token:
            return out


def _peer_region(admin_url: str, access_key: str, secret_key: str) -> str | None:
    """The region the peer's capacity document names (None: ask the broker to find out)."""
    token = base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()
    req = urllib.request.Request(f"{admin_url}/api/v1/capacity")  # noqa: S310
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            region = json.loads(resp.read()).get("region")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None  # the broker's own check will say why, in the peer's words
    return str(region) if region else None


@peer.command("add")
@click.argument("name")
@click.option("--url", required=True, help="the peer's EC2 endpoint, e.g. https://peer:8773")
@click.option("--admin-url", default=None, help="the peer's admin API (its capacity document)")
@click.option("--access-key", required=True, help="the key of the user the peer made for us")
@click.option("--secret", "secret_key", required=True)
@click.option("--region", default=None, help="the peer's region (default: as it says)")
@click.option("--image-map", multiple=True, help="OUR_IMAGE=PEER_IMAGE_ID_OR_NAME (repeatable)")
@click.option("--flavor-map", multiple=True, help="OUR_FLAVOR=PEER_FLAVOR (repeatable)")
@pass_ctx
def peer_add(
    ctx: Ctx,
    name: str,
    url: str,
    admin_url: str | None,
    access_key: str,
    secret_key: str,
    region: str | None,
    image_map: tuple[str, ...],
    flavor_map: tuple[str, ...],
) -> None:
    """Link to a peer; the broker reaches it once and refuses a link the peer refuses."""
    client = ctx.client()
    ours = client.call("GET", "/api/v1/capacity")
    settings: dict[str, Any] = {
        "url": url.rstrip("/"),
        "admin_url": (admin_url or url).rstrip("/"),
        "site": ours["site"],
    }
    region = region or _peer_region(settings["admin_url"], access_key, secret_key)
    if region:
        settings["region"] = region
    if image_map:
        settings["image_map"] = _mapping(image_map, "--image-map")
    if flavor_map:
        settings["flavor_map"] = _mapping(flavor_map, "--flavor-map")
    made = client.call(
        "POST",
        "/api/v1/targets",
        {
            "name": name,
            "kind": "peer",
            "driver": "peer",
            "settings": settings,
            "secret": {"access_key": access_key, "secret_key": secret_key},
        },
    )
    show(ctx, _row(made))


@peer.command("list")
@pass_ctx
def peer_list(ctx: Ctx) -> None:
    """Every link, its state (error: the peer does not answer) and what it advertises."""
    found = ctx.client().call("GET", "/api/v1/targets", query={"kind": "peer"})
    show(ctx, [_row(t) for t in found], PEER_COLUMNS)


@peer.command("show")
@click.argument("name")
@pass_ctx
def peer_show(ctx: Ctx, name: str) -> None:
    """One link, and our instances there by state."""
    client = ctx.client()
    target = _peer(client, name)
    by_state: dict[str, int] = {}
    for inst in _instances_on(client, target["id"]):
        by_state[inst["state"]] = by_state.get(inst["state"], 0) + 1
    show(ctx, {**_row(target), "instances_by_state": by_state})


@peer.command("test")
@click.argument("name")
@click.option("--timeout", type=float, default=5.0)
@pass_ctx
def peer_test(ctx: Ctx, name: str, timeout: float) -> None:
    """Reach the peer now from here, and say what the broker's monitor last saw."""
    target = _peer(ctx.client(), name)
    settings = target.get("settings") or {}
    base = str(settings.get("admin_url") or settings.get("url") or "")
    started = time.monotonic()
    report: dict[str, Any] = {"peer": name, "state": target["state"]}
    try:
        with urllib.request.urlopen(f"{base}/api/v1/health", timeout=timeout) as resp:  # noqa: S310
            health = json.loads(resp.read())
        report.update(
            reachable=True,
            region=health.get("region"),
            round_trip_ms=round((time.monotonic() - started) * 1000, 1),
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        report.update(reachable=False, error=str(getattr(exc, "reason", exc)))
    report.update(
        monitor_state=target["state"],
        monitor_reason=target.get("state_reason", ""),
        last_seen_at=target.get("last_seen_at"),
        advertised_cpu=target.get("total_cpu"),
        advertised_memory_mb=target.get("total_memory_mb"),
    )
    show(ctx, report)
    if not report["reachable"] or target["state"] == "error":
        raise SystemExit(1)


@peer.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="remove although instances run there")
@click.option("--yes", is_flag=True, help="do not ask to confirm what --force leaves behind")
@pass_ctx
def peer_remove(ctx: Ctx, name: str, force: bool, yes: bool) -> None:
    """Remove a link that runs nothing (or, with --force, leave its instances to the peer)."""
    client = ctx.client()
    target = _peer(client, name)
    left = _instances_on(client, target["id"])
    if left and not force:
        ids = ", ".join(i["id"] for i in left[:10]) + (" ..." if len(left) > 10 else "")
        fail(
            f"peer {name} still runs {len(left)} instance(s) of ours ({ids}); terminate them "
            "or use --force to leave them running on the peer"
        )
    if left:
        if not ctx.as_json:
            show(ctx, left, LEFT_COLUMNS, title=f"left running on peer {name}")
        if not yes and not click.confirm(
            f"Remove peer {name} and leave these {len(left)} instance(s) on it?", err=True
        ):
            fail("nothing removed")
    client.call("DELETE", f"/api/v1/targets/{name}", query={"force": "true"} if left else None)
    show(ctx, {"removed": name, "left_on_peer": [i["id"] for i in left]})
