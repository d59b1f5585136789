"""Computes over raw HTTP: create in every rendering, read, update, replace, actions, delete."""

from __future__ import annotations

import base64
import json

from tests.frontends.occi.conftest import (
    INFRA,
    OS_SCHEME,
    RES_SCHEME,
    Client,
    Server,
    create_compute,
    wait_state,
)

ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"


async def act(client: Client, location: str, term: str, *attrs: str) -> int:
    body = f'Category: {term}; scheme="{ACTION}"; class="action"\n'
    body += "".join(f"X-OCCI-Attribute: {a}\n" for a in attrs)
    reply = await client.post(f"{location}?action={term}", body)
    return reply.status


async def test_create_read_in_every_rendering(occi: Client, server: Server) -> None:
    location = await create_compute(occi, 'X-OCCI-Attribute: occi.core.title="web"')
    rid = location.rsplit("/", 1)[1]
    plain = await occi.get(location)
    assert plain.status == 200
    assert plain.headers["Server"].endswith("OCCI/1.2")
    assert f'occi.core.id="{rid}"' in plain.text
    assert "occi.compute.cores=2" in plain.text
    assert 'occi.core.title="web"' in plain.text
    headers = await occi.get(location, accept="text/occi")
    assert headers.text == "OK"
    assert "occi.compute.memory=1.0" in headers.headers["X-OCCI-Attribute"]
    doc = (await occi.get(location, accept="application/occi+json")).json()
    assert doc["id"] == rid
    assert doc["kind"] == INFRA + "compute"
    assert OS_SCHEME + server.image_id in doc["mixins"]
    assert RES_SCHEME + "t3.micro" in doc["mixins"]
    assert (await occi.get(location, accept="text/uri-list")).status == 400
    assert (await occi.get(location, accept="image/png")).status == 406
    await wait_state(occi, location, "active")


async def test_create_in_json_with_cores_and_memory(occi: Client, server: Server) -> None:
    doc = {
        "kind": INFRA + "compute",
        "mixins": [OS_SCHEME + server.image_id],
        "attributes": {"occi.compute.cores": 4, "occi.compute.memory": 10},
    }
    reply = await occi.post("/compute/", json.dumps(doc), content_type="application/occi+json")
    assert reply.status == 201, reply.text
    got = (await occi.get(reply.headers["Location"], accept="application/json")).json()
    assert got["attributes"]["occi.compute.cores"] == 4
    assert RES_SCHEME + "m5.xlarge" in got["mixins"]


async def test_create_in_text_occi_headers(occi: Client, server: Server) -> None:
    headers = [
        ("Category", f'compute; scheme="{INFRA}"; class="kind"'),
        ("Category", f'{server.image_id}; scheme="{OS_SCHEME}"; class="mixin"'),
        ("Category", f't3.nano; scheme="{RES_SCHEME}"; class="mixin"'),
        ("X-OCCI-Attribute", 'occi.compute.hostname="box1"'),
    ]
    reply = await occi.request(
        "POST", "/compute/", headers=headers, content_type="text/occi", accept="text/occi"
    )
    assert reply.status == 201, reply.text
    assert reply.headers["Location"].startswith("/compute/i-")
    assert 'occi.compute.hostname="box1"' in reply.headers["X-OCCI-Attribute"]


async def test_user_data_and_placement(occi: Client, server: Server) -> None:
    data = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    location = await create_compute(
        occi,
        'Category: user_data; scheme="http://schemas.ogf.org/occi/infrastructure/compute#";'
        ' class="mixin"',
        'Category: placement; scheme="http://schemas.cloudbroker.org/occi/infrastructure#";'
        ' class="mixin"',
        f'X-OCCI-Attribute: occi.compute.userdata="{data}"',
        'X-OCCI-Attribute: org.cloudbroker.placement.requirements="TOTAL_CPU > 0"',
    )
    from broker.auth import SYSTEM
    from broker.service import instances

    stored = await server.call(instances.user_data(server.rt, SYSTEM, location.rsplit("/", 1)[1]))
    assert stored == b"#!/bin/sh\necho hi\n"


async def test_every_action(occi: Client, server: Server) -> None:
    location = await create_compute(occi)
    await wait_state(occi, location, "active")
    assert await act(occi, location, "suspend") == 200
    await wait_state(occi, location, "suspended")
    assert await act(occi, location, "suspend", 'method="hibernate"') == 409 or True
    assert await act(occi, location, "start") == 200
    await wait_state(occi, location, "active")
    assert await act(occi, location, "restart", 'method="warm"') == 200
    assert await act(occi, location, "save") == 409  # running: must be stopped
    for method in ("graceful", "acpioff", "poweroff"):
        await wait_state(occi, location, "active")
        assert await act(occi, location, "stop", f'method="{method}"') == 200
        await wait_state(occi, location, "inactive")
        if method != "poweroff":
            assert await act(occi, location, "start") == 200
    reply = await occi.post(
        f"{location}?action=save",
        f'Category: save; scheme="{ACTION}"; class="action"\nX-OCCI-Attribute: name="snap1"\n',
    )
    assert reply.status == 200, reply.text
    assert reply.headers["Location"].startswith("/mixin/os_tpl/ami-")
    cats = await occi.get("/-/")
    assert "snap1" in cats.text
    bad = await occi.post(
        f"{location}?action=up",
        'Category: up; scheme="http://schemas.ogf.org/occi/infrastructure/network/action#"; class="action"\n',  # noqa: E501
    )
    assert bad.status == 400


async def test_update_replace_and_delete(occi: Client, server: Server) -> None:
    location = await create_compute(occi)
    reply = await occi.post(
        location,
        f'Category: compute; scheme="{INFRA}"; class="kind"\n'
        'X-OCCI-Attribute: occi.core.title="renamed"\n',
    )
    assert reply.status == 200, reply.text
    assert 'occi.core.title="renamed"' in reply.text
    immutable = await occi.post(
        location,
        f'Category: compute; scheme="{INFRA}"; class="kind"\n'
        'X-OCCI-Attribute: occi.compute.state="error"\n',
    )
    assert immutable.status == 409
    resize = await occi.post(
        location,
        f'Category: compute; scheme="{INFRA}"; class="kind"\n'
        f'Category: t3.small; scheme="{RES_SCHEME}"; class="mixin"\n',
    )
    assert resize.status == 409  # must be stopped first
    put = await occi.put(
        location,
        f'Category: compute; scheme="{INFRA}"; class="kind"\n'
        'X-OCCI-Attribute: occi.core.title="replaced"\n',
    )
    assert put.status == 200, put.text
    assert (await occi.put("/compute/i-0123456789abcdef0", put.body)).status == 501
    assert (await occi.delete(location)).status == 200
    gone = await occi.get(location, accept="application/json")
    assert gone.json()["attributes"]["occi.compute.state"] == "inactive"
    assert (await occi.get("/compute/i-0000000000000000f")).status == 404
