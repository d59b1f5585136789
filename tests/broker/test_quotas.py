"""Quotas: set and shown with usage, bad values refused, and exactly the quota admitted under
50 concurrent launches on both databases."""

from __future__ import annotations

import asyncio

import pytest

from broker.auth import SYSTEM
from broker.errors import Forbidden, InvalidRequest, NotFound, QuotaExceeded
from broker.runtime import Runtime
from broker.service import instances, quotas
from broker.service.instances import LaunchRequest
from tests.broker.test_service_instances import setup_world
from tests.conftest import Tenants


async def test_set_show_and_bad_values(rt: Runtime, tenants: Tenants) -> None:
    got = await quotas.set_quota(rt, SYSTEM, "alice", "instances", 3)
    assert (got.limit, got.used) == (3, 0)
    for resource, limit in [("instances", -1), ("instances", 1.5), ("instances", 1e12),
                            ("gpus", 1), ("vcpus", float("nan"))]:
        with pytest.raises(InvalidRequest):
            await quotas.set_quota(rt, SYSTEM, "alice", resource, limit)
    with pytest.raises(NotFound):
        await quotas.set_quota(rt, SYSTEM, "nobody", "instances", 1)
    with pytest.raises(Forbidden):
        await quotas.set_quota(rt, tenants.alice, "alice", "instances", 100)
    with pytest.raises(NotFound):
        await quotas.show(rt, tenants.bob, "alice")
    shown = {q.resource: q.limit for q in await quotas.show(rt, tenants.alice)}
    assert shown["instances"] == 3 and shown["vcpus"] is None


@pytest.mark.parametrize("subject", ["alice", "group:alice"])
async def test_exactly_the_quota_is_admitted_under_50_concurrent_launches(
        rt: Runtime, tenants: Tenants, subject: str) -> None:
    ami = await setup_world(rt)
    await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro", 1, 2))
    await quotas.set_quota(rt, SYSTEM, subject, "instances", 7)
    results = await asyncio.gather(
        *[instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro")) for _ in range(50)],
        return_exceptions=True)
    admitted = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(admitted) == 5 and len(refused) == 45, [r for r in results if
                                                       not isinstance(r, list | QuotaExceeded)]
    assert "quota" in refused[0].message
    page = await instances.describe(rt, tenants.alice)
    assert len(page.items) == 7
    used = {q.resource: q.used for q in await quotas.show(rt, SYSTEM, subject)}
    assert used["instances"] == 7 and used["vcpus"] == 14


async def test_max_count_is_trimmed_to_the_quota_and_released_on_terminate(
        rt: Runtime, tenants: Tenants) -> None:
    ami = await setup_world(rt)
    await quotas.set_quota(rt, SYSTEM, "alice", "vcpus", 6)
    got = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro", 2, 10))
    assert len(got) == 3
    with pytest.raises(QuotaExceeded):
        await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    await instances.terminate(rt, tenants.alice, [got[0].id])
    again = await instances.launch(rt, tenants.alice, LaunchRequest(ami, "t3.micro"))
    assert len(again) == 1
