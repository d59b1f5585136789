"""Decides what an EC2 Query request says: its parameters, action, version and their shapes.

Parameters come from the form body of a POST (``application/x-www-form-urlencoded``, with or
without a charset, which must be UTF-8) or the query of a GET, decoded from the raw bytes here
so every size is checked first: the body (1 MiB), the number of parameters and of list members.
Bytes that are not UTF-8, a name given twice or a list index that is not a positive number are
refused with a clear error, never guessed at. :class:`Params` reads EC2's flattened shapes:
``Foo.N``, ``Filter.N.Name`` / ``Filter.N.Value.M``, ``TagSpecification.N.Tag.M.Key`` and
``BlockDeviceMapping.N.Ebs.VolumeSize``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Awaitable, Callable, ItemsView, Iterator, Mapping
from typing import Final, TypeVar, overload
from urllib.parse import unquote_to_bytes

from aiohttp import web

from broker.auth import Caller
from broker.runtime import Runtime
from frontends.ec2.errors import WireError, combination, dry_run_error, invalid, missing
from frontends.ec2.lookups import DefaultGroups
from frontends.ec2.render import Element, Fragments

MAX_BODY: Final = 1024 * 1024
MAX_PARAMS: Final = 5000
MAX_NAME: Final = 256
MAX_MEMBERS: Final = 1000
_VERSION: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FORM: Final = "application/x-www-form-urlencoded"
#: what boto3 and euca2ools send, accepted without reading it apart
_USUAL_TYPES: Final = frozenset({_FORM, f"{_FORM}; charset=utf-8", f"{_FORM}; charset=UTF-8"})
T = TypeVar("T")


def decode_pairs(raw: bytes) -> dict[str, str]:
    """``a=1&b=%20x`` (``+`` is a space) as a dict; refuse non-UTF-8, repeats and excess."""
    out: dict[str, str] = {}
    if not raw:
        return out
    pieces = raw.split(b"&")
    if len(pieces) > MAX_PARAMS:
        raise WireError(
            "InvalidParameterValue", f"The request has more than {MAX_PARAMS} parameters."
        )
    plain = b"%" not in raw and b"+" not in raw  # nothing escaped: each piece is as it reads
    for piece in pieces:
        if not piece:
            continue
        name_b, _, value_b = piece.partition(b"=")
        try:
            if plain:
                name = name_b.decode("utf-8")
                value = value_b.decode("utf-8")
            else:
                name = unquote_to_bytes(name_b.replace(b"+", b" ")).decode("utf-8")
                value = unquote_to_bytes(value_b.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(
                "InvalidParameterValue", "The request parameters are not valid UTF-8."
            ) from None
        if not name or len(name) > MAX_NAME:
            raise WireError("InvalidParameterValue", "A parameter name is empty or too long.")
        if name in out:
            raise WireError(
                "InvalidParameterValue", f"The parameter {name[:64]} is given more than once."
            )
        out[name] = value
    return out


def check_content_type(request: web.Request) -> None:
    """Refuse a POST whose body is not a UTF-8 form."""
    if request.method != "POST":
        return
    header = request.headers.get("Content-Type", "")
    if not header or header in _USUAL_TYPES:
        return
    kind, _, rest = header.partition(";")
    if kind.strip().lower() != _FORM:
        raise WireError(
            "InvalidParameterValue", f"The Content-Type must be {_FORM}, not '{kind.strip()[:64]}'."
        )
    for part in rest.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value.strip('"').lower() not in ("utf-8", "utf8"):
            raise WireError("InvalidParameterValue", "The request charset must be UTF-8.")


async def read_body(request: web.Request) -> bytes:
    """The raw body, at most :data:`MAX_BODY` bytes (refused before reading when declared)."""
    too_big = WireError(
        "RequestEntityTooLarge", f"The request body is larger than {MAX_BODY} bytes.", 413
    )
    declared = request.content_length
    if declared is not None and declared > MAX_BODY:
        raise too_big
    if declared is not None and request.content.is_eof():
        # all of it is here already (a form of a few hundred bytes comes in one packet): the
        # parser fed exactly the declared bytes and then the end, taken without a wait
        return request.content.read_nowait()
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def request_params(method: str, query: bytes, body: bytes) -> dict[str, str]:
    """The parameters an action acts on: the form body of a POST, the query of a GET."""
    if method == "POST":
        return decode_pairs(body)
    if method in ("GET", "HEAD"):
        return decode_pairs(query)
    raise WireError("InvalidHttpRequest", f"The HTTP method {method[:16]} is not supported.")


def _index(text: str, name: str) -> int:
    if not text.isdigit() or text.startswith("0") or len(text) > 6:
        raise invalid("parameter name", name, "list indexes are positive numbers")
    return int(text)


class Params(Mapping[str, str]):
    """The decoded parameters of one request, with readers for EC2's flattened shapes."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # the dict's own, where Mapping's would call __getitem__ and catch its KeyError
    def __contains__(self, key: object) -> bool:
        return key in self._data

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: str | T) -> str | T: ...
    def get(self, key: str, /, default: object = None) -> object:
        return self._data.get(key, default)

    def items(self) -> ItemsView[str, str]:
        return self._data.items()

    def text(self, name: str) -> str | None:
        return self._data.get(name)

    def required(self, name: str) -> str:
        value = self._data.get(name)
        if value is None or value == "":
            raise missing(name)
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not value.strip().lstrip("-").isdigit() or len(value) > 12:
            raise invalid(name, value, "it must be an integer")
        number = int(value)
        if not low <= number <= high:
            raise invalid(name, value, f"it must be between {low} and {high}")
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._data.get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered not in ("true", "false"):
            raise invalid(name, value, "it must be true or false")
        return lowered == "true"

    def base64(self, name: str) -> bytes | None:
        value = self._data.get(name)
        if value is None:
            return None
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise invalid(name, "<data>", "it is not valid base64") from None

    def members(self, prefix: str) -> list[tuple[int, dict[str, str]]]:
        """``Prefix.N.Sub`` grouped by N in order: [(N, {"Sub": value, "": value of Prefix.N})]."""
        groups: dict[int, dict[str, str]] = {}
        dotted = prefix + "."
        for name, value in self._data.items():
            if name.startswith(dotted):  # Prefix.N or Prefix.N.Sub
                head, _, rest = name[len(dotted) :].partition(".")
                groups.setdefault(_index(head, name), {})[rest] = value
        if len(groups) > MAX_MEMBERS:
            raise invalid(prefix, f"{len(groups)} members", f"at most {MAX_MEMBERS} are allowed")
        return sorted(groups.items())

    def listing(self, prefix: str) -> list[str]:
        """The values of ``Prefix.1``, ``Prefix.2``... in index order."""
        out = []
        for _, fields in self.members(prefix):
            if "" not in fields or len(fields) != 1:
                raise invalid(prefix, next(iter(fields)), f"use {prefix}.N")
            out.append(fields[""])
        return out

    def filters(self) -> list[tuple[str, list[str]]]:
        """``Filter.N.Name`` with its ``Filter.N.Value.M`` values, in order."""
        out = []
        for number, fields in self.members("Filter"):
            name = fields.pop("Name", None)
            if not name:
                raise missing(f"Filter.{number}.Name")
            vals = sub_listing(fields, "Value", f"Filter.{number}")
            if not vals:
                raise missing(f"Filter.{number}.Value.1")
            out.append((name, vals))
        return out

    def tag_specifications(self) -> list[tuple[str, dict[str, str]]]:
        """(resource type, tags) for each ``TagSpecification.N``."""
        out = []
        for number, fields in self.members("TagSpecification"):
            kind = fields.pop("ResourceType", None)
            if not kind:
                raise missing(f"TagSpecification.{number}.ResourceType")
            out.append((kind, tags_of(fields, f"TagSpecification.{number}")))
        return out

    def page(self, *, low: int = 5, high: int = 1000, ids: bool = False) -> tuple[int | None, str]:
        """MaxResults and NextToken (MaxResults together with ids is refused, as EC2 does)."""
        size = self.integer("MaxResults", low, high)
        if size is not None and ids:
            raise combination(
                "The parameter instancesSet cannot be used with the parameter maxResults"
            )
        return size, self._data.get("NextToken") or ""


def sub_listing(fields: Mapping[str, str], name: str, where: str) -> list[str]:
    """``Name.M`` entries of one member's fields (``Value.1``, ``Value.2``...) in order."""
    found: dict[int, str] = {}
    for key, value in fields.items():
        head, dot, index = key.partition(".")
        if head == name and dot:
            found[_index(index, f"{where}.{key}")] = value
        elif key:
            raise invalid("parameter name", f"{where}.{key}", "it is not known")
    return [found[k] for k in sorted(found)]


def tags_of(fields: Mapping[str, str], where: str) -> dict[str, str]:
    """``Tag.M.Key`` / ``Tag.M.Value`` of one member's fields as a dict."""
    pairs: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        head, _, rest = key.partition(".")
        number, _, part = rest.partition(".")
        if head != "Tag" or part not in ("Key", "Value"):
            raise invalid("parameter name", f"{where}.{key}", "it is not known")
        pairs.setdefault(_index(number, f"{where}.{key}"), {})[part] = value
    tags: dict[str, str] = {}
    for index in sorted(pairs):
        tag_key = pairs[index].get("Key")
        if not tag_key:
            raise missing(f"{where}.Tag.{index}.Key")
        tags[tag_key] = pairs[index].get("Value", "")
    return tags


def version_of(params: Mapping[str, str]) -> str:
    """The client's API version (``2016-11-15``), echoed in the reply's namespace."""
    value = params.get("Version")
    if value is None:
        return "2016-11-15"
    if not _VERSION.fullmatch(value):
        raise invalid("Version", value, "it must look like 2016-11-15")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request as an action handler sees it."""

    rt: Runtime
    caller: Caller
    params: Params
    action: str
    version: str
    request_id: str
    host: str = ""
    fragments: Fragments | None = None  # the app's cache of rendered items
    default_groups: DefaultGroups | None = None  # the app's memo of default security groups

    @property
    def dry_run(self) -> bool:
        return self.params.boolean("DryRun")

    def check_dry_run(self) -> None:
        """Call after validation and authorization, before anything changes."""
        if self.dry_run:
            raise dry_run_error()


#: An action handler: reads the call, appends its answer to the reply's root element, or
#: returns the whole reply itself (as bytes, for an answer written as text in one go).
Handler = Callable[[Call, Element], Awaitable[bytes | None]]
