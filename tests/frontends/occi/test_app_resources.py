"""Storage, network, links, mixin collections, paging and filters over raw HTTP."""

from __future__ import annotations

import asyncio

import jsonschema

from frontends.occi.parse import load_schema
from tests.frontends.occi.conftest import INFRA, Client, Server, create_compute, wait_state

STORAGE = f'Category: storage; scheme="{INFRA}"; class="kind"\n'
SA = "http://schemas.ogf.org/occi/infrastructure/storage/action#"
NA = "http://schemas.ogf.org/occi/infrastructure/network/action#"


async def make_storage(client: Client, size: str = "2") -> str:
    reply = await client.post(
        "/storage/", STORAGE + f"X-OCCI-Attribute: occi.storage.size={size}\n"
    )
    assert reply.status == 201, reply.text
    return str(reply.headers["Location"])


async def test_storage_crud_and_actions(occi: Client, bob_client: Client) -> None:
    location = await make_storage(occi)
    got = await occi.get(location, accept="application/occi+json")
    assert got.json()["attributes"]["occi.storage.size"] == 2.0
    assert got.json()["attributes"]["occi.storage.state"] == "online"
    assert (await bob_client.get(location)).status == 404
    online = await occi.post(
        f"{location}?action=online", f'Category: online; scheme="{SA}"; class="action"\n'
    )
    assert online.status == 200
    offline = await occi.post(
        f"{location}?action=offline", f'Category: offline; scheme="{SA}"; class="action"\n'
    )
    assert offline.status == 501
    renamed = await occi.post(location, STORAGE + 'X-OCCI-Attribute: occi.core.title="data"\n')
    assert renamed.status == 200 and 'occi.core.title="data"' in renamed.text
    resize = await occi.put(location, STORAGE + "X-OCCI-Attribute: occi.storage.size=5\n")
    assert resize.status == 501
    listing = await occi.get("/storage/", accept="text/uri-list")
    assert listing.text == location + "\r\n"
    assert (await occi.delete(location)).status == 200
    assert (await occi.get(location)).status == 404


async def test_network_read_and_actions(occi: Client, server: Server) -> None:
    listing = await occi.get("/network/")
    assert f"X-OCCI-Location: /network/{server.network_id}" in listing.text
    one = await occi.get(f"/network/{server.network_id}", accept="application/json")
    assert one.json()["attributes"]["occi.network.address"] == "10.20.0.0/20"
    up = await occi.post(
        f"/network/{server.network_id}?action=up", f'Category: up; scheme="{NA}"; class="action"\n'
    )
    assert up.status == 200
    down = await occi.post(
        f"/network/{server.network_id}?action=down",
        f'Category: down; scheme="{NA}"; class="action"\n',
    )
    assert down.status == 501
    create = await occi.post(
        "/network/",
        f'Category: network; scheme="{INFRA}"; class="kind"\n'
        'Category: ipnetwork; scheme="http://schemas.ogf.org/occi/infrastructure/network#"; class="mixin"\n'  # noqa: E501
        'X-OCCI-Attribute: occi.core.title="mine"\nX-OCCI-Attribute: occi.network.address="10.99.0.0/24"\n',  # noqa: E501
    )
    assert create.status == 403  # admins only
    assert (await occi.delete(f"/network/{server.network_id}")).status == 501


async def test_inline_links_and_link_collections(occi: Client, server: Server) -> None:
    volume = await make_storage(occi)
    location = await create_compute(
        occi,
        f'Link: </network/{server.network_id}>; rel="{INFRA}network"; category="{INFRA}networkinterface"',  # noqa: E501
        f'Link: <{volume}>; rel="{INFRA}storage"; category="{INFRA}storagelink"; occi.storagelink.deviceid="/dev/vdc"',  # noqa: E501
    )
    await wait_state(occi, location, "active")
    doc = {}
    for _ in range(100):
        doc = (await occi.get(location, accept="application/occi+json")).json()
        if len(doc.get("links", [])) == 2:
            break
        await asyncio.sleep(0.1)
    jsonschema.validate(doc, load_schema())
    kinds = sorted(link["kind"] for link in doc["links"])
    assert kinds == [INFRA + "networkinterface", INFRA + "storagelink"]
    nic = next(link for link in doc["links"] if link["kind"].endswith("networkinterface"))
    assert nic["attributes"]["occi.networkinterface.address"].startswith("10.20.")
    nics = await occi.get("/link/networkinterface/")
    assert f"/link/networkinterface/{nic['id']}" in nics.text
    assert (await occi.get(f"/link/networkinterface/{nic['id']}")).status == 200
    assert (await occi.delete(f"/link/networkinterface/{nic['id']}")).status == 501
    vid = volume.rsplit("/", 1)[1]
    link = await occi.get(f"/link/storagelink/{vid}", accept="application/json")
    assert link.json()["attributes"]["occi.storagelink.deviceid"] == "/dev/vdc"
    assert (await occi.delete(f"/link/storagelink/{vid}")).status == 200
    for _ in range(200):  # the detach is carried out on the host by the scheduler
        if (await occi.get(f"/link/storagelink/{vid}")).status == 404:
            break
        await asyncio.sleep(0.05)
    again = await occi.post(
        "/link/storagelink/",
        f'Category: storagelink; scheme="{INFRA}"; class="kind"\n'
        f'X-OCCI-Attribute: occi.core.source="{location}"\nX-OCCI-Attribute: occi.core.target="{volume}"\n',  # noqa: E501
    )
    assert again.status == 201, again.text
    assert again.headers["Location"] == f"/link/storagelink/{vid}"


async def test_mixin_collections_paging_and_filters(occi: Client, server: Server) -> None:
    first = await create_compute(occi)
    second = await create_compute(occi, flavor="t3.nano")
    term = "grp" + first[-6:]
    mixin = f'{term}; scheme="http://example.org/tags#"; class="mixin"'
    added = await occi.post("/-/", f'Category: {mixin}; location="/mixin/{term}/"\n')
    assert added.status == 200
    assoc = await occi.post(f"/mixin/{term}/", f"X-OCCI-Location: {first}\n")
    assert assoc.status == 200, assoc.text
    members = await occi.get(f"/mixin/{term}/", accept="text/uri-list")
    assert members.text == first + "\r\n"
    filtered = await occi.get("/compute/", headers={"Category": mixin}, accept="text/uri-list")
    assert filtered.text == first + "\r\n"
    replaced = await occi.put(f"/mixin/{term}/", f"{second}\n", content_type="text/uri-list")
    assert replaced.status == 200
    assert (await occi.get(f"/mixin/{term}/", accept="text/uri-list")).text == second + "\r\n"
    assert (await occi.delete(f"/mixin/{term}/", headers={"X-OCCI-Location": second})).status == 200
    assert (await occi.get(f"/mixin/{term}/", accept="text/uri-list")).text == ""
    nano = await occi.get("/mixin/resource_tpl/t3.nano/", accept="text/uri-list")
    assert second in nano.text and first not in nano.text
    assert (
        await occi.post("/mixin/resource_tpl/t3.nano/", f"X-OCCI-Location: {first}\n")
    ).status == 501
    by_attr = await occi.get(
        "/compute/", headers={"X-OCCI-Attribute": "occi.compute.memory=0.5"}, accept="text/uri-list"
    )
    assert by_attr.text == second + "\r\n"
    page1 = await occi.get("/compute/?number=1&page=1", accept="text/uri-list")
    page2 = await occi.get("/compute/?number=1&page=2", accept="text/uri-list")
    assert sorted([page1.text, page2.text]) == sorted([first + "\r\n", second + "\r\n"])
    assert (await occi.get("/compute/?number=0")).status == 400
    unknown = await occi.get("/compute/", headers={"X-OCCI-Attribute": "occi.nope=1"})
    assert unknown.status == 400
    json_list = (await occi.get("/compute/", accept="application/occi+json")).json()
    jsonschema.validate(json_list, load_schema())
    assert len(json_list["resources"]) == 2
    occi_list = await occi.get("/compute/", accept="text/occi")
    assert occi_list.text == "OK" and first in occi_list.headers["X-OCCI-Location"]
    assert (await occi.get(f"/mixin/nothing{term}/")).status == 404
