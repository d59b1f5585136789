"""The burst policy page: the policy in force, an editor that tests or saves, and its history.

The editor takes the document as TOML or JSON. A document that does not parse, or that the
policy plugin refuses, is shown again with the error beside the field it names, and nothing
is saved. "Test" runs placement over the current pending instances with the edited document
and writes nothing.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from aiohttp import web

from broker import errors
from broker.service import policies
from frontends.web.base import caller_of, field, form_of, redirect, render, rt_of, url

HISTORY = 30
_LINE = re.compile(r"line (\d+)")


def parse(text: str) -> dict[str, Any]:
    """The document in ``text`` (JSON if it starts with '{', else TOML)."""
    if not text.strip():
        raise errors.InvalidRequest("the policy document is empty", field="document")
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise errors.InvalidRequest(
                f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                field="document",
            ) from None
        if not isinstance(value, dict):
            raise errors.InvalidRequest("a policy is a JSON object", field="document")
        return value
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidRequest(f"not valid TOML: {exc}", field="document") from None


def error_line(message: str) -> int | None:
    found = _LINE.search(message)
    return int(found.group(1)) if found else None


async def _page(
    request: web.Request,
    *,
    text: str | None = None,
    comment: str = "",
    error: errors.BrokerError | None = None,
    result: dict[str, Any] | None = None,
    status: int = 200,
    saved: str = "",
) -> web.Response:
    rt, caller = rt_of(request), caller_of(request)
    history = await policies.history(rt, caller, limit=HISTORY)
    current = history[0] if history else None
    if text is None:
        text = json.dumps(current.document, indent=2, sort_keys=True) if current else "{}"
    return render(
        request,
        "policy.html",
        status=status,
        current=current,
        history=history,
        text=text,
        comment=comment,
        error=error.message if error else "",
        error_field=(error.field or "document") if error else "",
        error_line=error_line(error.message) if error else None,
        result=result,
        saved=saved,
        dumps=lambda d: json.dumps(d, indent=2, sort_keys=True),
    )


async def policy_page(request: web.Request) -> web.Response:
    saved = request.query.get("saved", "")
    return await _page(request, saved=saved if saved.isdigit() else "")


async def policy_post(request: web.Request) -> web.StreamResponse:
    rt, caller = rt_of(request), caller_of(request)
    form = await form_of(request)
    text, comment, op = field(form, "document"), field(form, "comment"), field(form, "op")
    if op not in ("test", "save"):
        raise errors.InvalidRequest("choose test or save", field="op")
    try:
        document = parse(text)
        if op == "test":
            result = await policies.test_policy(rt, caller, document)
            return await _page(request, text=text, comment=comment, result=result)
        view = await policies.set_policy(rt, caller, document, comment)
    except errors.InvalidRequest as exc:
        return await _page(request, text=text, comment=comment, error=exc, status=400)
    raise redirect(url(request, "policy", {"saved": str(view.version)}))
