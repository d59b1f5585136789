"""The query interface over raw HTTP: every rendering, filters, templates, user mixins."""

from __future__ import annotations

import jsonschema

from frontends.occi.parse import load_schema
from tests.frontends.occi.conftest import INFRA, OS_SCHEME, RES_SCHEME, Client, Server

USER_MIXIN = 'Category: {term}; scheme="http://example.org/tags#"; class="mixin"; location="/mixin/{term}/"\n'  # noqa: E501


async def test_every_rendering(occi: Client, server: Server) -> None:
    for path in ("/-/", "/.well-known/org/ogf/occi/-/"):
        plain = await occi.get(path)
        assert plain.status == 200
        assert plain.headers["Server"] == "cloudbroker OCCI/1.2"
        assert f'compute; scheme="{INFRA}"; class="kind"' in plain.text
        for term in ("os_tpl", "resource_tpl", "ipnetwork", "ipnetworkinterface", "user_data",
                     "ssh_key"):  # fmt: skip
            assert f"Category: {term};" in plain.text
        assert (
            'start; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#"'
            in plain.text
        )
        headers = await occi.get(path, accept="text/occi")
        assert headers.text == "OK"
        assert any('class="kind"' in v for v in headers.all("Category"))
        doc = (await occi.get(path, accept="application/occi+json")).json()
        jsonschema.validate(doc, load_schema())
        assert any(m["term"] == server.image_id for m in doc["mixins"])
        stop = next(a for a in doc["actions"] if a["term"] == "stop")
        assert stop["attributes"]["method"]["pattern"]["enum"] == [
            "graceful",
            "acpioff",
            "poweroff",
        ]
        assert (await occi.get(path, accept="text/uri-list")).status == 400
        assert (await occi.get(path, accept="image/png")).status == 406


async def test_templates_through_their_relation(occi: Client, server: Server) -> None:
    os_only = await occi.get(
        "/-/",
        headers={"Category": f'os_tpl; scheme="{INFRA}"; class="mixin"'},
        accept="application/json",
    )
    doc = os_only.json()
    terms = {m["term"] for m in doc["mixins"]}
    assert server.image_id in terms and "os_tpl" in terms
    assert "t3.micro" not in terms and not doc["kinds"]
    res = (
        await occi.get(
            "/-/",
            headers={"Category": f'resource_tpl; scheme="{INFRA}"; class="mixin"'},
            accept="application/json",
        )
    ).json()
    micro = next(m for m in res["mixins"] if m["term"] == "t3.micro")
    assert micro["scheme"] == RES_SCHEME
    assert micro["attributes"]["occi.compute.cores"]["default"] == 2
    assert micro["location"] == "/mixin/resource_tpl/t3.micro/"
    assert OS_SCHEME


async def test_user_mixins(occi: Client, server: Server, bob_client: Client) -> None:
    added = await occi.post("/-/", USER_MIXIN.format(term="web"))
    assert added.status == 200, added.text
    assert "Category: web;" in (await occi.get("/-/")).text
    again = await occi.post("/-/", USER_MIXIN.format(term="web"))
    assert again.status == 409
    reserved = await occi.post(
        "/-/",
        'Category: x; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="mixin"; location="/mixin/x/"\n',  # noqa: E501
    )
    assert reserved.status == 400
    gone_by_bob = await bob_client.delete(
        "/-/", headers={"Category": 'web; scheme="http://example.org/tags#"; class="mixin"'}
    )
    assert gone_by_bob.status == 403
    builtin = await occi.delete(
        "/-/", headers={"Category": f'compute; scheme="{INFRA}"; class="kind"'}
    )
    assert builtin.status == 403
    removed = await occi.delete(
        "/-/", headers={"Category": 'web; scheme="http://example.org/tags#"; class="mixin"'}
    )
    assert removed.status == 200
    assert "Category: web;" not in (await occi.get("/-/")).text
    unknown = await occi.delete(
        "/-/", headers={"Category": 'web; scheme="http://example.org/tags#"; class="mixin"'}
    )
    assert unknown.status == 404
