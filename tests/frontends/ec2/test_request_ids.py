"""Request ids: EC2's UUID shape, never the same twice in one app, apart between apps."""

from __future__ import annotations

import uuid

from frontends.ec2.app import RequestIds


def test_request_ids_are_uuid_shaped_and_unique() -> None:
    ids = RequestIds()
    made = [ids.next() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    for one in made[:10] + made[-10:]:
        assert str(uuid.UUID(one)) == one  # 8-4-4-4-12 lowercase hex


def test_two_apps_make_different_ids() -> None:
    assert RequestIds().next() != RequestIds().next()
