"""JSON collections made from cached pieces are the very bytes render_collection makes, and a
piece is reused only for an equal source."""

from __future__ import annotations

import json

from frontends.occi import render
from frontends.occi.parse import Entity, Link

COMPUTE = "http://schemas.ogf.org/occi/infrastructure#compute"


def _entity(n: int) -> Entity:
    link = Link(
        kind="http://schemas.ogf.org/occi/infrastructure#networkinterface",
        attributes={
            "occi.core.id": f"eni-{n}",
            "occi.core.target": "/network/net-1",
            "occi.core.source": f"/compute/i-{n}",
        },
        location=f"/link/networkinterface/eni-{n}",
    )
    attributes = {"occi.core.id": f"i-{n}", "occi.core.title": 'wé"b', "occi.compute.cores": n}
    return Entity(COMPUTE, ("http://x#m",), attributes, (link,), (COMPUTE + "/action#stop",))


def test_pieces_make_the_same_bytes() -> None:
    entities = [_entity(n) for n in range(3)]
    locations = [f"/compute/i-{n}" for n in range(3)]
    for media in ("application/occi+json", "application/json"):
        whole = render.render_collection(media, locations, entities)
        pieces = [render.json_resource(e, loc) for e, loc in zip(entities, locations, strict=True)]
        made = render.render_resources(media, pieces)
        assert made == whole
        json.loads(made.body)
    assert render.render_resources("application/json", []) == render.render_collection(
        "application/json", [], []
    )


def test_a_piece_is_reused_only_for_an_equal_source() -> None:
    cache = render.Pieces(size=2)
    built: list[int] = []

    def build(n: int) -> str:
        built.append(n)
        return str(n)

    assert cache.get("i-1", ("v", 1), lambda: build(1)) == "1"
    assert cache.get("i-1", ("v", 1), lambda: build(2)) == "1"
    assert cache.get("i-1", ("v", 2), lambda: build(3)) == "3"
    cache.get("i-2", 0, lambda: build(4))
    cache.get("i-3", 0, lambda: build(5))
    assert len(cache) == 2 and built == [1, 3, 4, 5]
