"""Decides how replies look on the wire: the EC2 XML envelope, lists, times and errors.

Every reply is in the namespace ``http://ec2.amazonaws.com/doc/VERSION/`` (the client's own
Version), with ``requestId`` first. Lists are ``<item>`` elements, booleans ``true``/``false``,
times ISO 8601 UTC with milliseconds. Replies are built with lxml, which escapes untrusted text
(and refuses control characters, which we drop first), except where building a tree an element
at a time shows in a request's cost: an instance's ``<item>`` (some fifty elements) and the
RunInstances reply around it are written as text by :func:`markup`, which drops the same
characters and escapes with the standard library. Tests hold it to what lxml writes for the same
values, hostile ones included. An item is read back into lxml (:func:`parsed`) where a reply
keeps it in a tree (describes, whose items are reused while unchanged); a RunInstances reply,
which nothing keeps, is sent as written (:func:`document`).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TypeAlias
from xml.sax.saxutils import escape, quoteattr

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

DEFAULT_VERSION: Final = "2016-11-15"
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

Element: TypeAlias = etree._Element


def namespace(version: str) -> str:
    return f"http://ec2.amazonaws.com/doc/{version}/"


#: envelopes made before, by action and version, copied for each reply (a copy costs a quarter
#: of making one: lxml registers the namespace anew for a new root)
_ENVELOPES: dict[tuple[str, str], Element] = {}
_MAX_ENVELOPES: Final = 512


def envelope(action: str, version: str, request_id: str) -> Element:
    """The ``<ActionResponse>`` root with its ``requestId``."""
    made = _ENVELOPES.get((action, version))
    if made is None:
        if len(_ENVELOPES) >= _MAX_ENVELOPES:  # versions are the client's: keep a few
            _ENVELOPES.clear()
        made = _ENVELOPES[action, version] = etree.Element(
            f"{action}Response", nsmap={None: namespace(version)}
        )
        text(made, "requestId", "")
    root: Element = made.__copy__()
    root[0].text = _clean(request_id)
    return root


def serialize(root: Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _clean(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot carry (a printable string has none)."""
    return value if value.isprintable() else _CONTROL.sub("", value)


def text(parent: Element, tag: str, value: str | int | bool | None) -> Element:
    """A child ``<tag>value</tag>`` (booleans as true/false, None as an empty element)."""
    el = etree.SubElement(parent, tag)
    if isinstance(value, bool):
        el.text = "true" if value else "false"
    elif value is not None:
        el.text = _clean(str(value))
    return el


def escaped(value: str | int | bool | None) -> str:
    """What :func:`text` would put in an element, as escaped XML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    value = str(value)
    return escape(value if value.isprintable() else _CONTROL.sub("", value))


def markup(tag: str, value: str | int | bool | None) -> str:
    """``<tag>value</tag>`` as text (``tag`` is ours, never the client's)."""
    return f"<{tag}>{escaped(value)}</{tag}>"


_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def parsed(text: str) -> Element:
    """The element that ``text``, written with :func:`markup`, describes."""
    return etree.fromstring(text, _PARSER)


_DECLARATION: Final = b"<?xml version='1.0' encoding='UTF-8'?>\n"


def document(action: str, version: str, request_id: str, body: str) -> bytes:
    """The ``<ActionResponse>`` with its ``requestId`` around ``body`` (written with
    :func:`markup`), byte for byte as :func:`serialize` writes the same tree."""
    text = (
        f"<{action}Response xmlns={quoteattr(namespace(version))}>"
        f"{markup('requestId', request_id)}{body}</{action}Response>"
    )
    return _DECLARATION + text.encode()


def opt(parent: Element, tag: str, value: str | int | None) -> None:
    """A child only when there is a value (EC2 leaves out what it does not know)."""
    if value is not None and value != "":
        text(parent, tag, value)


def detached(tag: str) -> Element:
    """An element with no parent yet (appended later, e.g. from :class:`Fragments`)."""
    return etree.Element(tag)


def node(parent: Element, tag: str) -> Element:
    return etree.SubElement(parent, tag)


def item(parent: Element) -> Element:
    return etree.SubElement(parent, "item")


def timestamp(value: dt.datetime) -> str:
    """``2026-11-25T13:48:21.177Z``: UTC with milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def return_true(root: Element) -> None:
    text(root, "return", True)


def tag_set(parent: Element, tags: Mapping[str, str]) -> None:
    """``<tagSet>`` with one item per tag, left out when there are none (as EC2 does)."""
    if not tags:
        return
    box = node(parent, "tagSet")
    for key in sorted(tags):
        it = item(box)
        text(it, "key", key)
        text(it, "value", tags[key])


def values(parent: Element, tag: str, entries: Iterable[str], inner: str) -> Element:
    """``<tag><item><inner>v</inner></item>...</tag>``."""
    box = node(parent, tag)
    for entry in entries:
        text(item(box), inner, entry)
    return box


def strings(parent: Element, tag: str, entries: Iterable[str]) -> Element:
    """``<tag><item>v</item>...</tag>``."""
    box = node(parent, tag)
    for entry in entries:
        text(box, "item", entry)
    return box


def error(code: str, message: str, request_id: str) -> bytes:
    """The EC2 error document (no namespace, ``RequestID`` with a capital D, as AWS sends)."""
    root = etree.Element("Response")
    err = etree.SubElement(etree.SubElement(root, "Errors"), "Error")
    text(err, "Code", code)
    text(err, "Message", message)
    text(root, "RequestID", request_id)
    return serialize(root)


class Fragments:
    """Rendered subtrees (an instance's ``<item>``), reused while what they show is unchanged.

    An entry is found by a name (the resource id) and used only when the value it was rendered
    from equals the value read for this request, so a change shows at once and nothing is served
    that this request did not read. Entries carry no namespace, so one serves every API version.
    At most ``size`` are kept, the least recently used dropped first; the app owns one.
    """

    __slots__ = ("_items", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[object, Element]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def append(
        self, parent: Element, name: str, source: object, build: Callable[[], Element]
    ) -> None:
        """Append to ``parent`` a copy of ``build()``, rendered now or for an equal ``source``."""
        hit = self._items.get(name)
        if hit is not None and hit[0] == source:
            self._items.move_to_end(name)
            parent.append(copy.deepcopy(hit[1]))
            return
        fresh = build()
        if self.size > 0:
            self._items[name] = (source, copy.deepcopy(fresh))
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        parent.append(fresh)
