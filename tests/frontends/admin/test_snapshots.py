"""``/api/v1/instances/{id}/snapshots`` over real HTTP, on a simulated libvirt host: the whole
round (take two, list, revert, delete), and each refusal in the API's JSON error shape with its
4xx status (a driver without snapshots: 501). The vSphere round is in tests/backends/vmware."""

from __future__ import annotations

from typing import Any

import pytest

from broker.auth import SYSTEM, Caller
from broker.runtime import Runtime
from broker.service import instances, targets, users
from broker.service.instances import LaunchRequest
from broker.states import State
from tests.broker.test_service_vmsnapshots import settle, world
from tests.conftest import make_user
from tests.frontends.admin.conftest import admin_api, call


async def launched(rt: Runtime, driver: str) -> tuple[str, str, str]:
    """An instance of alice's running on a ``driver`` host; (its id, alice's and bob's tokens)."""
    ami = await world(rt, driver)
    tokens = []
    for name in ("alice", "bob"):
        await users.create_user(rt, SYSTEM, name)
        tokens.append(await users.issue_token(rt, SYSTEM, name))
    alice = await users.get_user(rt, SYSTEM, "alice")
    caller = Caller(alice.id, alice.name, alice.group_id, alice.role)
    (inst,) = await instances.launch(rt, caller, LaunchRequest(ami, "t3.micro"))
    await settle(rt)
    assert (await instances.get(rt, caller, inst.id)).state is State.RUNNING
    return inst.id, tokens[0], tokens[1]


def error(body: Any) -> tuple[str, str]:
    assert set(body) == {"error"}, body
    return body["error"]["code"], body["error"]["message"]


async def test_the_snapshot_round_over_http(sqlite_rt: Runtime) -> None:
    rid, alice, _ = await launched(sqlite_rt, "libvirt")
    base = f"/api/v1/instances/{rid}/snapshots"
    async with admin_api(sqlite_rt) as api:
        for name in ("one", "two"):
            status, made = await call(api, "POST", base, alice, json={"name": name})
            assert (status, made) == (201, {"instance_id": rid, "name": name})
        status, listed = await call(api, "GET", base, alice)
        assert status == 200 and [s["name"] for s in listed] == ["one", "two"]
        status, reverted = await call(api, "POST", f"{base}/one/revert", alice)
        assert (status, reverted) == (200, {"instance_id": rid, "name": "one"})
        status, _ = await call(api, "DELETE", f"{base}/one", alice)
        assert status == 204
        status, listed = await call(api, "GET", base)  # the operator sees it too
        assert status == 200 and [s["name"] for s in listed] == ["two"]
        status, events = await call(api, "GET", f"/api/v1/instances/{rid}/events", alice)
        assert "reverted to snapshot 'one'" in [e["message"] for e in events]


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status", "code", "says"),
    [
        ("POST", "/one/revert", None, 404, "NotFound", "has no snapshot named 'one'"),
        ("DELETE", "/one", None, 404, "NotFound", "has no snapshot named 'one'"),
        ("POST", "", {"name": "two"}, 409, "AlreadyExists", "already has a snapshot"),
        ("POST", "", {"name": "a b"}, 400, "InvalidRequest", "not a valid snapshot name"),
        ("POST", "", {"name": "x" * 65}, 400, "InvalidRequest", "not a valid snapshot name"),
        ("POST", "", {"name": ""}, 400, "InvalidRequest", "not a valid snapshot name"),
        ("POST", "", {"name": 7}, 400, "InvalidRequest", "'name' must be a string"),
        ("POST", "", {}, 400, "InvalidRequest", "'name' is required"),
        ("POST", "", {"name": "ok", "memory": True}, 400, "InvalidRequest", "unknown field"),
        ("POST", "/bad%20name/revert", None, 400, "InvalidRequest", "not a valid snapshot"),
    ],
)
async def test_refusals_are_json_with_4xx(
    sqlite_rt: Runtime,
    method: str,
    suffix: str,
    body: Any,
    status: int,
    code: str,
    says: str,
) -> None:
    rid, alice, _ = await launched(sqlite_rt, "libvirt")
    base = f"/api/v1/instances/{rid}/snapshots"
    async with admin_api(sqlite_rt) as api:
        assert (await call(api, "POST", base, alice, json={"name": "two"}))[0] == 201
        got, answer = await call(api, method, base + suffix, alice, json=body)
        assert got == status, answer
        assert error(answer)[0] == code and says in error(answer)[1]


async def test_other_tenants_and_unknown_instances_get_404(sqlite_rt: Runtime) -> None:
    rid, alice, bob = await launched(sqlite_rt, "libvirt")
    async with admin_api(sqlite_rt) as api:
        assert (await call(api, "POST", f"/api/v1/instances/{rid}/snapshots", alice,
                           json={"name": "mine"}))[0] == 201  # fmt: skip
        for method, path, body in (
            ("GET", f"/api/v1/instances/{rid}/snapshots", None),
            ("POST", f"/api/v1/instances/{rid}/snapshots", {"name": "x"}),
            ("POST", f"/api/v1/instances/{rid}/snapshots/mine/revert", None),
            ("DELETE", f"/api/v1/instances/{rid}/snapshots/mine", None),
        ):
            status, answer = await call(api, method, path, bob, json=body)
            assert status == 404 and error(answer) == (
                "NotFound",
                f"the instance '{rid}' does not exist",
            )
        status, answer = await call(api, "GET", "/api/v1/instances/i-0123456789abcdef0/snapshots")
        assert status == 404 and error(answer)[0] == "NotFound"
        status, answer = await call(api, "GET", "/api/v1/instances/nonsense/snapshots")
        assert status == 400 and error(answer)[0] == "InvalidRequest"
        status, listed = await call(api, "GET", f"/api/v1/instances/{rid}/snapshots", alice)
        assert [s["name"] for s in listed] == ["mine"]


async def test_a_driver_without_snapshots_answers_501(sqlite_rt: Runtime) -> None:
    rid, alice, _ = await launched(sqlite_rt, "fake")
    async with admin_api(sqlite_rt) as api:
        status, answer = await call(
            api, "POST", f"/api/v1/instances/{rid}/snapshots", alice, json={"name": "s"}
        )
        assert status == 501
        assert error(answer) == (
            "Unsupported",
            f"the instance '{rid}' runs on 'fake-1', whose fake driver keeps no snapshots",
        )


async def test_an_instance_not_placed_answers_409(sqlite_rt: Runtime) -> None:
    ami = await world(sqlite_rt, "libvirt")
    await targets.set_state(sqlite_rt, SYSTEM, "libvirt-1", "disabled")
    alice = await make_user(sqlite_rt, "alice")
    (inst,) = await instances.launch(sqlite_rt, alice, LaunchRequest(ami, "t3.micro"))
    async with admin_api(sqlite_rt) as api:
        status, answer = await call(
            api, "POST", f"/api/v1/instances/{inst.id}/snapshots", json={"name": "s"}
        )
        assert status == 409 and error(answer)[0] == "InvalidState"
        assert "is pending" in error(answer)[1]
