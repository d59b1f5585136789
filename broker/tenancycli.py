"""``cloudbroker group ...`` and ``cloudbroker quota set|show``: tenancy over the admin API.

Decides what an operator types. ``group create|list|show|delete NAME``; ``group add-user GROUP
USER`` moves a user (and what they own) into a group; ``group set-role USER ROLE`` gives a user
the admin, groupadmin or user role (they live under ``group`` because ``user`` is the core
CLI's). ``quota set SUBJECT RESOURCE=LIMIT ...`` sets limits in one request (``none`` lifts
one), ``quota show [SUBJECT]`` shows limits with what is used; ``--group`` says SUBJECT names a
group when a user has the same name. The broker checks everything; a refused request changes
nothing and is one line on stderr.
"""

from __future__ import annotations

import math
from typing import Any

import click

from broker.auth import ROLES
from broker.cli import Ctx, fail, pass_ctx, show
from broker.service.quotas import RESOURCES

GROUP_COLUMNS = ["id", "name", "members", "created_at"]
MEMBER_COLUMNS = ["id", "name", "role", "enabled"]
QUOTA_COLUMNS = ["subject", "resource", "limit", "used"]
UNLIMITED = ("none", "unlimited", "-")


def _name(value: str, what: str = "name") -> str:
    if not value or "/" in value or "?" in value or "#" in value or len(value) > 128:
        fail(f"invalid {what} '{value[:40]}'")
    return value


def _subject(name: str, is_group: bool) -> str:
    _name(name, "user or group")
    return f"group:{name}" if is_group and not name.startswith("group:") else name


@click.group()
def group() -> None:
    """Groups of users, their members and roles."""


@group.command("create")
@click.argument("name")
@pass_ctx
def group_create(ctx: Ctx, name: str) -> None:
    """Create an empty group."""
    show(ctx, ctx.client().call("POST", "/api/v1/groups", {"name": name}))


@group.command("list")
@pass_ctx
def group_list(ctx: Ctx) -> None:
    """Every group with how many enabled users it has."""
    show(ctx, ctx.client().call("GET", "/api/v1/groups"), GROUP_COLUMNS)


@group.command("show")
@click.argument("name")
@pass_ctx
def group_show(ctx: Ctx, name: str) -> None:
    """One group and its members."""
    found: dict[str, Any] = ctx.client().call("GET", f"/api/v1/groups/{_name(name)}")
    if ctx.as_json:
        show(ctx, found)
        return
    members = found.pop("users", [])
    show(ctx, found)
    if members:
        show(ctx, members, MEMBER_COLUMNS, title="members")


@group.command("delete")
@click.argument("name")
@pass_ctx
def group_delete(ctx: Ctx, name: str) -> None:
    """Delete an empty group (no users, nothing recorded against it)."""
    ctx.client().call("DELETE", f"/api/v1/groups/{_name(name)}")
    show(ctx, {"deleted": name})


@group.command("add-user")
@click.argument("name")
@click.argument("user")
@pass_ctx
def group_add_user(ctx: Ctx, name: str, user: str) -> None:
    """Move USER, and everything they own, into the group NAME."""
    path = f"/api/v1/users/{_name(user, 'user')}/group"
    show(ctx, ctx.client().call("PUT", path, {"group": name}))


@group.command("set-role")
@click.argument("user")
@click.argument("role", type=click.Choice(ROLES))
@pass_ctx
def group_set_role(ctx: Ctx, user: str, role: str) -> None:
    """Give USER the admin, groupadmin (acts on their group's resources) or user role."""
    path = f"/api/v1/users/{_name(user, 'user')}/role"
    show(ctx, ctx.client().call("PUT", path, {"role": role}))


@click.group()
def quota() -> None:
    """Limits per user and per group, with what is in use."""


def _limits(items: tuple[str, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for item in items:
        resource, sep, value = item.partition("=")
        if not sep or not resource or not value:
            fail(f"give RESOURCE=LIMIT ({', '.join(RESOURCES)}), got '{item[:40]}'")
        if resource not in RESOURCES:
            fail(f"unknown quota '{resource[:32]}'; use one of {', '.join(RESOURCES)}")
        if value.lower() in UNLIMITED:
            out[resource] = None
            continue
        try:
            limit = float(value)
        except ValueError:
            fail(f"the '{resource}' limit must be a number or 'none', got '{value[:20]}'")
        if not math.isfinite(limit):
            fail(f"the '{resource}' limit must be a finite number")
        out[resource] = int(limit) if limit.is_integer() else limit
    return out


@quota.command("set")
@click.argument("subject")
@click.argument("limits", nargs=-1, required=True)
@click.option("--group", "is_group", is_flag=True, help="SUBJECT is a group")
@pass_ctx
def quota_set(ctx: Ctx, subject: str, limits: tuple[str, ...], is_group: bool) -> None:
    """Set limits, e.g. ``quota set alice instances=10 vcpus=20 memory_mb=none``."""
    path = f"/api/v1/quotas/{_subject(subject, is_group)}"
    show(ctx, ctx.client().call("PUT", path, _limits(limits)), QUOTA_COLUMNS)


@quota.command("show")
@click.argument("subject", required=False)
@click.option("--group", "is_group", is_flag=True, help="SUBJECT is a group")
@pass_ctx
def quota_show(ctx: Ctx, subject: str | None, is_group: bool) -> None:
    """Limits and usage of SUBJECT (default: yourself)."""
    query = {"subject": _subject(subject, is_group)} if subject else None
    show(ctx, ctx.client().call("GET", "/api/v1/quotas", query=query), QUOTA_COLUMNS)
