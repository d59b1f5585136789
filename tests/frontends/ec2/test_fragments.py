"""The EC2 app's cache of rendered items: reused only for an equal source, bounded, and a copy
each time (a reply never shares elements with the cache or another reply)."""

from __future__ import annotations

from lxml import etree

from frontends.ec2 import render as r


def _item(text: str) -> r.Element:
    it = r.detached("item")
    r.text(it, "instanceId", text)
    return it


def test_an_equal_source_reuses_a_different_one_renders_again() -> None:
    cache = r.Fragments(size=10)
    built: list[str] = []

    def build(text: str) -> r.Element:
        built.append(text)
        return _item(text)

    one, two, three = (r.envelope("DescribeInstances", "2016-11-15", "x") for _ in range(3))
    cache.append(one, "i-1", ("a", {"k": "v"}), lambda: build("a"))
    cache.append(two, "i-1", ("a", {"k": "v"}), lambda: build("never"))
    cache.append(three, "i-1", ("b", {"k": "v"}), lambda: build("b"))
    assert built == ["a", "b"]
    assert etree.tostring(one) == etree.tostring(two)
    assert b"<instanceId>b</instanceId>" in etree.tostring(three)
    assert one[1] is not two[1]  # copies, not the cached element itself


def test_the_cache_is_bounded() -> None:
    cache = r.Fragments(size=3)
    root = r.envelope("DescribeInstances", "2016-11-15", "x")
    for n in range(10):
        cache.append(root, f"i-{n}", n, lambda n=n: _item(str(n)))  # type: ignore[misc]
    assert len(cache) == 3
    assert len(root) == 11  # requestId and ten items
