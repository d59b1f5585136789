"""``cloudbroker hook add|list|show|enable|disable|remove|log``: scripts and webhooks on events.

Decides what an operator types to register a hook and read how its runs went, over the admin
API. ``hook add NAME --script PATH`` or ``--webhook URL``, ``--on EVENT`` (repeatable: the
events of :data:`broker.hooks.EVENTS`), ``--filter KEY=VALUE`` (repeatable; the same key twice
means either value) and ``--timeout SECONDS``. The broker checks everything and refuses a bad
hook with its reason; nothing is changed then.
"""

from __future__ import annotations

from typing import Any

import click

from broker.cli import Ctx, fail, pass_ctx, show
from broker.hooks import EVENTS, FILTERS

HOOK_COLUMNS = ["name", "kind", "command", "events", "filters", "timeout_s", "enabled"]
RUN_COLUMNS = ["id", "hook", "event_id", "started_at", "duration_ms", "status", "exit_code"]


@click.group()
def hook() -> None:
    """Scripts and webhooks the broker runs on events, and the log of their runs."""


def _filters(items: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            fail(f"--filter wants KEY=VALUE ({', '.join(FILTERS)}), got '{item}'")
        out.setdefault(key, []).append(value)
    return out


def _name(name: str) -> str:
    if not name or "/" in name or len(name) > 64:
        fail(f"invalid hook name '{name[:40]}'")
    return name


@hook.command("add")
@click.argument("name")
@click.option("--script", default=None, help="absolute path of an executable on the broker")
@click.option("--webhook", default=None, help="http(s) URL the event is POSTed to as JSON")
@click.option("--on", "events", multiple=True, required=True, help=f"event: {', '.join(EVENTS)}")
@click.option("--filter", "filters", multiple=True, help=f"KEY=VALUE, KEY: {', '.join(FILTERS)}")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds")
@click.option("--disabled", is_flag=True, help="register it without running it yet")
@pass_ctx
def hook_add(
    ctx: Ctx,
    name: str,
    script: str | None,
    webhook: str | None,
    events: tuple[str, ...],
    filters: tuple[str, ...],
    timeout: float,
    disabled: bool,
) -> None:
    """Run a script or call a webhook on every matching event."""
    if (script is None) == (webhook is None):
        fail("give exactly one of --script PATH or --webhook URL")
    data: dict[str, Any] = {
        "name": name,
        "kind": "script" if script is not None else "webhook",
        "command": script if script is not None else webhook,
        "events": list(events),
        "filters": _filters(filters),
        "timeout": timeout,
        "enabled": not disabled,
    }
    show(ctx, ctx.client().call("POST", "/api/v1/hooks", data))


@hook.command("list")
@pass_ctx
def hook_list(ctx: Ctx) -> None:
    """Every hook, what it runs and on which events."""
    show(ctx, ctx.client().call("GET", "/api/v1/hooks"), HOOK_COLUMNS)


@hook.command("show")
@click.argument("name")
@pass_ctx
def hook_show(ctx: Ctx, name: str) -> None:
    """One hook."""
    show(ctx, ctx.client().call("GET", f"/api/v1/hooks/{_name(name)}"))


@hook.command("enable")
@click.argument("name")
@pass_ctx
def hook_enable(ctx: Ctx, name: str) -> None:
    """Run a paused hook again, from the next event on."""
    show(ctx, ctx.client().call("POST", f"/api/v1/hooks/{_name(name)}/enable"))


@hook.command("disable")
@click.argument("name")
@pass_ctx
def hook_disable(ctx: Ctx, name: str) -> None:
    """Pause a hook; it keeps its log, and events meanwhile do not run it later."""
    show(ctx, ctx.client().call("POST", f"/api/v1/hooks/{_name(name)}/disable"))


@hook.command("remove")
@click.argument("name")
@pass_ctx
def hook_remove(ctx: Ctx, name: str) -> None:
    """Remove a hook and the log of its runs."""
    ctx.client().call("DELETE", f"/api/v1/hooks/{_name(name)}")
    show(ctx, {"removed": name})


@hook.command("log")
@click.argument("name", required=False)
@click.option("--status", type=click.Choice(["ok", "failed", "timeout"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--output", "with_output", is_flag=True, help="print each run's output too")
@pass_ctx
def hook_log(ctx: Ctx, name: str | None, status: str | None, limit: int, with_output: bool) -> None:
    """The newest runs (of one hook, or of all): how each ended and what it printed."""
    path = f"/api/v1/hooks/{_name(name)}/runs" if name else "/api/v1/hook-runs"
    found = ctx.client().call("GET", path, query={"status": status, "limit": limit})
    if with_output and not ctx.as_json:
        for run in found:
            show(ctx, run)
            click.echo("")
        return
    show(ctx, found, RUN_COLUMNS)
