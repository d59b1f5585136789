"""Collection GETs answered again while the database is unchanged: the same bytes while
nothing changed, at once the new state after a change (ours or another process's), and never
one tenant's answer to another."""

from __future__ import annotations

import sqlite3

import aiohttp

from tests.frontends.occi.conftest import Client, Server, client_for, create_compute, new_tenant


async def test_a_collection_reads_the_same_until_anything_changes(
    occi: Client, server: Server
) -> None:
    first = await create_compute(occi)
    listed = await occi.get("/compute/", accept="text/uri-list")
    again = await occi.get("/compute/", accept="text/uri-list")
    assert listed.status == again.status == 200
    assert listed.body == again.body and first in listed.text
    assert again.headers["Content-Type"].startswith("text/uri-list")
    assert again.headers["Server"].endswith("OCCI/1.2")

    second = await create_compute(occi)
    assert second in (await occi.get("/compute/", accept="text/uri-list")).text

    doc = (await occi.get("/compute/", accept="application/occi+json")).json()
    rid = second.rsplit("/", 1)[1]
    # another connection (as another process would) changes the instance's hostname behind our back
    with sqlite3.connect(server.rt.config.database_url.split("///", 1)[1]) as db:
        db.execute("UPDATE instances SET hostname = 'renamed-elsewhere' WHERE id = ?", (rid,))
    doc = (await occi.get("/compute/", accept="application/occi+json")).json()
    names = {r["id"]: r["attributes"].get("occi.compute.hostname") for r in doc["resources"]}
    assert names[rid] == "renamed-elsewhere"


async def test_another_tenant_gets_its_own_collection(
    occi: Client, server: Server, session: aiohttp.ClientSession
) -> None:
    mine = await create_compute(occi)
    assert mine in (await occi.get("/compute/", accept="text/uri-list")).text
    other = client_for(server, session, new_tenant(server, "o"))
    theirs = await other.get("/compute/", accept="text/uri-list")
    assert theirs.status == 200 and mine not in theirs.text
