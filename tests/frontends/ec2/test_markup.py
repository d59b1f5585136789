"""Subtrees written as text (an instance's ``<item>``): every value escaped exactly as lxml's own
``text()`` would carry it, and the structure the values came in untouched by what they contain."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from lxml import etree

from broker.service.instances import InstanceView, InterfaceView
from broker.states import State
from frontends.ec2 import render as r
from frontends.ec2.actions.instances import _instance_item, _instance_markup

HOSTILE = [
    "plain",
    "a<b>c",
    "&amp; & &lt;",
    "</instanceId><ownerId>evil</ownerId>",
    "]]> <![CDATA[x]]>",
    "quote \" and ' apostrophe",
    "control \x00\x01\x1f chars",
    "unicode ünï 漢字 \U0001f600",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_markup_reads_back_as_text_would_write_it(value: str) -> None:
    via_text = r.detached("box")
    r.text(via_text, "v", value)
    via_markup = r.parsed(f"<box>{r.markup('v', value)}</box>")
    assert etree.tostring(via_markup) == etree.tostring(via_text) or (
        value == "" and via_markup[0].text is None and via_text[0].text == ""
    )
    assert len(via_markup) == 1


@pytest.mark.parametrize("value", [True, False, None, 0, 42])
def test_markup_of_booleans_numbers_and_nothing(value: bool | int | None) -> None:
    via_text = r.detached("box")
    r.text(via_text, "v", value)
    assert (r.parsed(r.markup("v", value)).text or "") == (via_text[0].text or "")


def _instance(**changes: object) -> InstanceView:
    now = dt.datetime(2026, 11, 26, 13, 48, 21, 177_000, tzinfo=dt.UTC)
    base = InstanceView(
        id="i-0123456789abcdef0",
        owner_id="u-1",
        group_id="g-1",
        reservation_id="r-1",
        launch_index=0,
        client_token=None,
        image_id="ami-1",
        flavor="t3.nano",
        vcpus=2,
        memory_mb=512,
        state=State.PENDING,
        state_reason="",
        intent=None,
        target_id=None,
        key_name=None,
        zone=None,
        hostname="i-0123456789abcdef0",
        private_ip="10.0.0.5",
        public_ip=None,
        created_at=now,
        launched_at=None,
        updated_at=now,
        tags={},
        interfaces=(InterfaceView("eni-1", "subnet-1", 0, "02:00:0a:00:00:05", "10.0.0.5"),),
        security_groups=(("sg-1", "default"),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", HOSTILE)
def test_an_instance_item_carries_hostile_values_as_text(value: str) -> None:
    inst = _instance(
        state=State.FAILED,
        state_reason=value or "x",
        key_name=value or None,
        client_token=value or None,
        hostname=value,
        tags={value: value, "k": value},
        security_groups=(("sg-1", value), ("sg-2", "b")),
    )
    item = _instance_item("region-1", inst)
    clean = value if value.isprintable() else "control  chars"

    def one(path: str) -> str:
        found = item.findall(path)
        assert len(found) == 1, path
        return str(found[0].text or "")

    assert one("privateDnsName") == clean
    assert one("reason") == (clean or "x")
    assert one("stateReason/message") == (clean or "x")
    if value:
        assert one("keyName") == clean
        assert one("clientToken") == clean
    assert [g.text or "" for g in item.findall("groupSet/item/groupName")] == [clean, "b"]
    tags = {
        (t.findtext("key") or ""): (t.findtext("value") or "")
        for t in item.iter("item")
        if t.find("key") is not None
    }
    assert tags == {clean: clean, "k": clean}
    assert one("instanceId") == "i-0123456789abcdef0"  # nothing a value holds adds elements
    assert len(item.findall("ownerId")) == 0


def test_an_instance_item_leaves_out_what_it_does_not_know() -> None:
    item = _instance_item("region-1", _instance(interfaces=(), private_ip=None))
    for absent in (
        "keyName",
        "subnetId",
        "vpcId",
        "privateIpAddress",
        "ipAddress",
        "clientToken",
        "tagSet",
        "stateReason",
    ):
        assert item.find(absent) is None, absent
    assert item.findtext("launchTime") == "2026-11-26T13:48:21.177Z"
    assert item.findtext("instanceState/name") == "pending"
    assert len(item.find("networkInterfaceSet")) == 0


@pytest.mark.parametrize("value", HOSTILE)
def test_a_document_is_what_serialising_the_same_tree_writes(value: str) -> None:
    root = r.envelope("RunInstances", "2016-11-15", "req-1")
    r.text(root, "reservationId", value)
    r.node(root, "groupSet")
    written = r.document(
        "RunInstances", "2016-11-15", "req-1", r.markup("reservationId", value) + "<groupSet/>"
    )
    if value:
        assert written == r.serialize(root)
    else:  # an empty text is <x></x> from lxml's tree, <x/> from text: the same element
        c14n = etree.tostring(etree.fromstring(written), method="c14n")
        assert c14n == etree.tostring(root, method="c14n")


def test_a_launch_answer_reads_back_with_hostile_values_as_text() -> None:
    for value in HOSTILE:
        inst = _instance(key_name=value or None, tags={"k": value}, hostname=value)
        body = f"<instancesSet>{_instance_markup('region-1', inst)}</instancesSet>"
        doc = etree.fromstring(r.document("RunInstances", "2016-11-15", "req-1", body))
        clean = value if value.isprintable() else "control  chars"
        (item,) = doc.findall("{*}instancesSet/{*}item")
        assert (item.findtext("{*}privateDnsName") or "") == clean
        assert (item.findtext("{*}tagSet/{*}item/{*}value") or "") == clean
        assert len(doc) == 2  # requestId and instancesSet: no value added an element
