"""The tenancy routes of the admin API over real HTTP, on both databases: groups, a user's group
and role, quotas; who may call them; bad input answered as JSON errors that change nothing;
expired and tampered tokens refused. And ``cloudbroker group|quota`` as a real CLI process
against a real admin listener.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from broker import model as m
from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import users
from frontends.admin.app import create_app
from tests.conftest import make_config
from tests.frontends.admin.conftest import API, admin_api, call


@pytest.fixture
async def api(rt: Runtime) -> AsyncIterator[API]:
    async with admin_api(rt) as served:
        yield served


async def snapshot(rt: Runtime) -> list[Any]:
    async with rt.engine.connect() as conn:
        return [
            sorted(map(tuple, (await conn.execute(select(t))).all()), key=repr)
            for t in (m.Group, m.User, m.Quota, m.Token)
        ]


async def test_groups_roles_and_quotas_through_the_api(api: API, rt: Runtime) -> None:
    await users.create_user(rt, SYSTEM, "alice")
    status, made = await call(api, "POST", "/api/v1/groups", json={"name": "research"})
    assert status == 201 and made["name"] == "research" and made["members"] == 0
    status, moved = await call(api, "PUT", "/api/v1/users/alice/group", json={"group": "research"})
    assert status == 200 and moved["group"] == "research"
    status, promoted = await call(
        api, "PUT", "/api/v1/users/alice/role", json={"role": "groupadmin"}
    )
    assert status == 200 and promoted["role"] == "groupadmin"
    status, listed = await call(api, "GET", "/api/v1/groups")
    assert status == 200 and {g["name"]: g["members"] for g in listed}["research"] == 1
    status, shown = await call(api, "GET", "/api/v1/groups/research")
    assert [(u["name"], u["role"]) for u in shown["users"]] == [("alice", "groupadmin")]

    status, quotas = await call(
        api, "PUT", "/api/v1/quotas/group:research", json={"instances": 10, "spend_per_hour": 2.5}
    )
    assert status == 200
    limits = {q["resource"]: q["limit"] for q in quotas}
    assert limits["instances"] == 10 and limits["spend_per_hour"] == 2.5
    assert limits["vcpus"] is None
    status, quotas = await call(api, "GET", "/api/v1/quotas?subject=group:research")
    assert {q["resource"]: q["used"] for q in quotas}["instances"] == 0
    status, quotas = await call(api, "PUT", "/api/v1/quotas/alice", json={"volumes": 3})
    assert {q["resource"]: q["limit"] for q in quotas}["volumes"] == 3
    status, quotas = await call(api, "DELETE", "/api/v1/quotas/alice/volumes")
    assert status == 200 and {q["resource"]: q["limit"] for q in quotas}["volumes"] is None
    status, quotas = await call(
        api, "PUT", "/api/v1/quotas/group:research", json={"instances": None}
    )
    assert {q["resource"]: q["limit"] for q in quotas}["instances"] is None

    await call(api, "PUT", "/api/v1/users/alice/group", json={"group": "alice"})
    status, _ = await call(api, "DELETE", "/api/v1/groups/research")
    assert status == 204
    status, _ = await call(api, "GET", "/api/v1/groups/research")
    assert status == 404
    async with rt.engine.connect() as conn:
        messages = set(await conn.scalars(select(m.Event.message).where(m.Event.kind == "audit")))
    assert {
        "group created",
        "group deleted",
        "user group changed",
        "user role changed",
        "quota set",
    } <= messages


async def test_who_may_call_the_tenancy_routes(api: API, rt: Runtime) -> None:
    await users.create_user(rt, SYSTEM, "alice")
    await users.create_user(rt, SYSTEM, "bob")
    await users.create_user(rt, SYSTEM, "boss", group="alice", role="groupadmin")
    alice = await users.issue_token(rt, SYSTEM, "alice")
    boss = await users.issue_token(rt, SYSTEM, "boss")
    await call(api, "PUT", "/api/v1/quotas/alice", json={"instances": 5})
    before = await snapshot(rt)
    for token in (alice, boss):
        for method, path, body in (
            ("POST", "/api/v1/groups", {"name": "mine"}),
            ("DELETE", "/api/v1/groups/bob", None),
            ("PUT", "/api/v1/users/bob/group", {"group": "alice"}),
            ("PUT", "/api/v1/users/alice/role", {"role": "admin"}),
            ("PUT", "/api/v1/quotas/alice", {"instances": 500}),
            ("DELETE", "/api/v1/quotas/alice/instances", None),
        ):
            status, answer = await call(api, method, path, token, json=body)
            assert status == 403, (method, path, answer)
            assert answer["error"]["code"] == "Forbidden"
    after = await snapshot(rt)
    assert after[:3] == before[:3]
    # what they may see: their own group and their own quota
    status, listed = await call(api, "GET", "/api/v1/groups", alice)
    assert status == 200 and [g["name"] for g in listed] == ["alice"]
    status, shown = await call(api, "GET", "/api/v1/groups/alice", alice)
    assert status == 200 and shown["users"] == []
    status, shown = await call(api, "GET", "/api/v1/groups/alice", boss)
    assert {u["name"] for u in shown["users"]} == {"alice", "boss"}
    for token in (alice, boss):
        status, _ = await call(api, "GET", "/api/v1/groups/bob", token)
        assert status == 404
        status, _ = await call(api, "GET", "/api/v1/quotas?subject=bob", token)
        assert status == 404
    status, mine = await call(api, "GET", "/api/v1/quotas", alice)
    assert status == 200 and {q["resource"]: q["limit"] for q in mine}["instances"] == 5


BAD: list[tuple[str, str, Any, int]] = [
    ("POST", "/api/v1/groups", {"name": "bad name!"}, 400),
    ("POST", "/api/v1/groups", {"name": 7}, 400),
    ("POST", "/api/v1/groups", {}, 400),
    ("POST", "/api/v1/groups", {"name": "alice"}, 409),
    ("GET", "/api/v1/groups/nosuch", None, 404),
    ("DELETE", "/api/v1/groups/nosuch", None, 404),
    ("DELETE", "/api/v1/groups/alice", None, 409),
    ("PUT", "/api/v1/users/nobody/group", {"group": "alice"}, 404),
    ("PUT", "/api/v1/users/alice/group", {"group": "nosuch"}, 404),
    ("PUT", "/api/v1/users/alice/group", {}, 400),
    ("PUT", "/api/v1/users/alice/role", {"role": "emperor"}, 400),
    ("PUT", "/api/v1/users/nobody/role", {"role": "user"}, 404),
    ("PUT", "/api/v1/users/operator/role", {"role": "user"}, 400),
    ("PUT", "/api/v1/quotas/alice", {"instances": -1}, 400),
    ("PUT", "/api/v1/quotas/alice", {"instances": 1e12}, 400),
    ("PUT", "/api/v1/quotas/alice", {"instances": 2.5}, 400),
    ("PUT", "/api/v1/quotas/alice", {"instances": "ten"}, 400),
    ("PUT", "/api/v1/quotas/alice", {"instances": True}, 400),
    ("PUT", "/api/v1/quotas/alice", {"gpus": 1}, 400),
    ("PUT", "/api/v1/quotas/alice", {"vcpus": 4, "memory_mb": -5}, 400),
    ("PUT", "/api/v1/quotas/alice", {}, 400),
    ("PUT", "/api/v1/quotas/alice", [1], 400),
    ("PUT", "/api/v1/quotas/nobody", {"instances": 1}, 404),
    ("PUT", "/api/v1/quotas/group:nosuch", {"instances": 1}, 404),
    ("DELETE", "/api/v1/quotas/alice/gpus", None, 400),
    ("GET", "/api/v1/quotas?subject=nobody", None, 404),
]


async def test_bad_input_is_a_json_error_and_changes_nothing(api: API, rt: Runtime) -> None:
    await users.create_user(rt, SYSTEM, "alice")
    before = await snapshot(rt)
    for method, path, body, status in BAD:
        got, answer = await call(api, method, path, json=body)
        assert got == status, (method, path, body, answer)
        assert answer["error"]["code"] and answer["error"]["message"]
    assert await snapshot(rt) == before


async def test_non_finite_quota_values_are_refused(api: API, rt: Runtime) -> None:
    await users.create_user(rt, SYSTEM, "alice")
    before = await snapshot(rt)
    for raw in (b'{"instances": NaN}', b'{"vcpus": Infinity}', b'{"memory_mb": -Infinity}'):
        got, answer = await call(
            api, "PUT", "/api/v1/quotas/alice", data=raw,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert got == 400, answer
    assert await snapshot(rt) == before


async def test_expired_and_tampered_tokens_are_refused(api: API, rt: Runtime) -> None:
    await users.create_user(rt, SYSTEM, "alice")
    good = await users.issue_token(rt, SYSTEM, "alice", ttl=dt.timedelta(hours=1))
    expired = await users.issue_token(rt, SYSTEM, "alice", ttl=dt.timedelta(seconds=-1))
    assert (await call(api, "GET", "/api/v1/groups", good))[0] == 200
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for token in (expired, tampered, good + "x", good.upper(), "cbt_", " "):
        status, answer = await call(api, "GET", "/api/v1/groups", token)
        assert status == 401, token
        assert answer["error"]["code"] == "Unauthenticated"
    # a token that expires while in use stops working at once
    rt.clock = lambda: (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).timestamp()
    assert (await call(api, "GET", "/api/v1/groups", good))[0] == 401


# --- the CLI, as a real process against a real admin listener -----------------------------------

BOOT = (
    "import sys; from broker.cli import main; from broker.tenancycli import group, quota\n"
    "for c in (group, quota):\n"
    "    main.commands.setdefault(c.name, c)\n"
    "main(prog_name='cloudbroker')"
)  # the entry points (setup.py) register both groups; this adds them where they are not yet


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An admin listener (tenancy routes included) on SQLite, in a thread: (url, token)."""
    tmp = tmp_path_factory.mktemp("tenancy-cli")
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        rt = await open_runtime(make_config(tmp, f"sqlite+aiosqlite:///{tmp / 'b.db'}"))
        runner = web.AppRunner(create_app(rt), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        box["url"] = f"http://{host}:{port}"
        box["token"] = json.loads((tmp / "operator.json").read_text())["token"]
        box["stop"] = stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await rt.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(60), "the admin listener did not start"
    try:
        yield box["url"], box["token"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


def run(listener: tuple[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    url, token = listener
    return subprocess.run(
        [sys.executable, "-c", BOOT, "--url", url, "--token", token, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[3],
    )


def run_json(listener: tuple[str, str], *args: str) -> Any:
    result = run(listener, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_groups_and_quotas(listener: tuple[str, str]) -> None:
    made = run_json(listener, "group", "create", "lab")
    assert made["name"] == "lab"
    run(listener, "user", "create", "carol")
    moved = run_json(listener, "group", "add-user", "lab", "carol")
    assert moved["group"] == "lab"
    assert run_json(listener, "group", "set-role", "carol", "groupadmin")["role"] == "groupadmin"
    shown = run_json(listener, "group", "show", "lab")
    assert [u["name"] for u in shown["users"]] == ["carol"]
    table = run(listener, "group", "show", "lab")
    assert table.returncode == 0 and "carol" in table.stdout
    assert "lab" in {g["name"] for g in run_json(listener, "group", "list")}

    set_ = run_json(listener, "quota", "set", "lab", "--group", "instances=4", "spend_per_hour=1.5")
    limits = {q["resource"]: q["limit"] for q in set_}
    assert limits["instances"] == 4 and limits["spend_per_hour"] == 1.5
    run_json(listener, "quota", "set", "carol", "vcpus=8")
    lifted = run_json(listener, "quota", "set", "carol", "vcpus=none")
    assert {q["resource"]: q["limit"] for q in lifted}["vcpus"] is None
    shown_q = run_json(listener, "quota", "show", "group:lab")
    assert {q["resource"]: q["limit"] for q in shown_q}["instances"] == 4
    assert run(listener, "quota", "show", "carol").returncode == 0

    before = run_json(listener, "quota", "show", "lab", "--group")
    for args in (
        ("quota", "set", "carol", "instances=-1"),
        ("quota", "set", "carol", "instances=lots"),
        ("quota", "set", "carol", "instances=inf"),
        ("quota", "set", "carol", "gpus=1"),
        ("quota", "set", "carol", "instances"),
        ("quota", "set", "nobody", "instances=1"),
        ("quota", "set", "lab", "--group", "instances=2", "vcpus=-3"),
        ("quota", "show", "nobody"),
        ("group", "create", "bad name!"),
        ("group", "create", "lab"),
        ("group", "show", "nosuch"),
        ("group", "delete", "lab"),
        ("group", "add-user", "nosuch", "carol"),
        ("group", "add-user", "lab", "nobody"),
        ("group", "set-role", "operator", "user"),
    ):
        result = run(listener, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args
        assert "Traceback" not in result.stderr
    assert run_json(listener, "quota", "show", "lab", "--group") == before
    bad_role = run(listener, "group", "set-role", "carol", "emperor")
    assert bad_role.returncode == 2 and "Traceback" not in bad_role.stderr

    run(listener, "group", "add-user", "carol", "carol")
    deleted = run_json(listener, "group", "delete", "lab")
    assert deleted == {"deleted": "lab"}


async def test_secrets_and_tokens_are_not_stored_in_the_clear(api: API, rt: Runtime) -> None:
    made = await users.create_user(rt, SYSTEM, "alice")
    token = await users.issue_token(rt, SYSTEM, "alice")
    async with rt.engine.connect() as conn:
        sealed = await conn.scalar(
            select(m.AccessKey.secret_enc).where(m.AccessKey.access_key == made.access_key)
        )
        digests = list(await conn.scalars(select(m.Token.digest)))
    assert sealed is not None and made.secret_key.encode() not in sealed
    assert rt.box.open(sealed) == made.secret_key
    assert token not in digests and all(len(d) == 64 for d in digests)
    key_file = rt.config.data_path / "secret.key"
    assert key_file.stat().st_mode & 0o077 == 0
    status, listed = await call(api, "GET", "/api/v1/users")
    assert status == 200 and made.secret_key not in json.dumps(listed)
