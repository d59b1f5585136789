"""The web interface over real HTTP (no browser): sign-in, sessions, CSRF, authorization,
404s, escaping, confirmations, policy validation and the event stream.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
from aiohttp import ClientSession, ClientTimeout, CookieJar, web

from broker.auth import SYSTEM, Caller
from broker.service import instances, policies, targets, users
from broker.states import State
from frontends.web.app import create_app
from tests.frontends.web.conftest import Server, Tenant, new_tenant

T = TypeVar("T")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
MARKUP = '<script>alert("x")</script><b>bold</b>'


async def on_server(server: Server, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the server's loop and await it from the test's."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server.loop))


class Browser:
    """A cookie-keeping HTTP client, signed in as one tenant after :meth:`sign_in`."""

    def __init__(self, server: Server, session: ClientSession) -> None:
        self.server = server
        self.session = session
        self.csrf = ""

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.server.ui + path, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: dict[str, str], csrf: bool = True) -> tuple[int, str]:
        form = {"csrf": self.csrf, **data} if csrf else data
        async with self.session.post(
            self.server.ui + path, data=form, allow_redirects=False
        ) as resp:
            return resp.status, await resp.text()

    async def sign_in(self, tenant: Tenant) -> None:
        status, _ = await self.post(
            "login", {"access_key": tenant.access_key, "secret": tenant.secret_key}, csrf=False
        )
        assert status == 303
        status, page = await self.get("")
        assert status == 200 and tenant.name in page
        found = CSRF.search(page)
        assert found is not None
        self.csrf = found.group(1)


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(
        cookie_jar=CookieJar(unsafe=True), timeout=ClientTimeout(total=30)
    ) as s:
        yield s


async def as_user(server: Server, session: ClientSession, tenant: Tenant) -> Browser:
    browser = Browser(server, session)
    await browser.sign_in(tenant)
    return browser


async def launch(server: Server, tenant: Tenant, tags: dict[str, str] | None = None) -> str:
    async def go() -> str:
        user = await users.get_user(server.rt, SYSTEM, tenant.name)
        who = Caller(user.id, user.name, user.group_id, user.role)
        req = instances.LaunchRequest(image_id=server.image_id, flavor="t3.micro", tags=tags or {})
        return (await instances.launch(server.rt, who, req))[0].id

    return await on_server(server, go())


async def state_of(server: Server, rid: str) -> State:
    return (await on_server(server, instances.get(server.rt, SYSTEM, rid))).state


async def wait_state(server: Server, rid: str, *states: State) -> None:
    async with asyncio.timeout(30):
        while await state_of(server, rid) not in states:
            await asyncio.sleep(0.1)


async def test_sign_in_sets_a_strict_cookie_and_bad_credentials_fail(
    server: Server, session: ClientSession
) -> None:
    alice = new_tenant(server, "alice")
    browser = Browser(server, session)
    status, page = await browser.get("")
    assert status == 303  # to the sign-in form
    status, page = await browser.post(
        "login", {"access_key": alice.access_key, "secret": "wrong"}, csrf=False
    )
    assert (
        status == 401 and "not valid" in page and not session.cookie_jar.filter_cookies(server.ui)
    )
    async with session.post(
        server.ui + "login",
        data={"access_key": alice.access_key, "secret": alice.secret_key},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/ui/"
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    status, page = await browser.get("")
    assert status == 200 and alice.name in page and 'href="/ui/instances"' in page


async def test_sign_in_with_a_token(server: Server, session: ClientSession) -> None:
    bob = new_tenant(server, "bob")
    token = await on_server(server, users.issue_token(server.rt, SYSTEM, bob.name))
    browser = Browser(server, session)
    status, _ = await browser.post("login", {"token": token}, csrf=False)
    assert status == 303
    assert bob.name in (await browser.get("instances"))[1]


@pytest.mark.parametrize(
    "path",
    ["instances/i-0123456789abcdef0", "instances/nonsense", "instances/%3Cb%3E", "no-such-page"],
)
async def test_missing_pages_answer_404(server: Server, session: ClientSession, path: str) -> None:
    browser = await as_user(server, session, new_tenant(server))
    status, page = await browser.get(path)
    assert status == 404 and "Not found" in page and "<b>" not in page


async def test_every_list_renders(server: Server, session: ClientSession) -> None:
    for tenant in (new_tenant(server), new_tenant(server, "op", role="admin")):
        browser = await as_user(server, session, tenant)
        for path in ("", "instances", "targets", "images", "networks", "volumes", "users"):
            status, page = await browser.get(path)
            assert status == 200, (path, page)
        status, page = await browser.get("targets?kind=host&q=h2")
        assert status == 200 and 'data-target="h2"' in page and 'data-target="h1"' not in page
        status, _ = await browser.get("targets?kind=planet")
        assert status == 400


async def test_markup_typed_by_users_stays_text(server: Server, session: ClientSession) -> None:
    alice = new_tenant(server, "alice")
    rid = await launch(server, alice, {"Name": MARKUP, "note": MARKUP})
    browser = await as_user(server, session, alice)
    for path in (f"instances/{rid}", "instances", f"instances?q={MARKUP}"):
        status, page = await browser.get(path)
        assert status == 200
        assert MARKUP not in page and "&lt;script&gt;" in page, path
    status, page = await browser.get("instances?q=%3Cscript%3E")
    assert status == 200 and rid in page


async def test_another_tenant_sees_nothing(server: Server, session: ClientSession) -> None:
    alice, mallory = new_tenant(server, "alice"), new_tenant(server, "mallory")
    rid = await launch(server, alice)
    browser = await as_user(server, session, mallory)
    assert rid not in (await browser.get("instances"))[1]
    assert rid not in (await browser.get(""))[1]
    assert (await browser.get(f"instances/{rid}"))[0] == 404
    assert (await browser.post(f"instances/{rid}/stop", {}))[0] == 404
    assert (await browser.post(f"instances/{rid}/terminate", {"confirm": "yes"}))[0] == 404
    assert await state_of(server, rid) is not State.DONE
    status, page = await browser.get("users")
    assert status == 200 and alice.name not in page
    assert (await browser.get("policy"))[0] == 403
    assert (await browser.post("targets/h1/drain", {"confirm": "yes"}))[0] == 403


async def test_posts_need_the_session_csrf_token(server: Server, session: ClientSession) -> None:
    alice = new_tenant(server, "alice")
    rid = await launch(server, alice)
    await wait_state(server, rid, State.RUNNING)
    browser = await as_user(server, session, alice)
    for data in ({}, {"csrf": "forged"}):
        status, _ = await browser.post(f"instances/{rid}/stop", data, csrf=False)
        assert status == 403
    assert await state_of(server, rid) is State.RUNNING
    status, _ = await browser.post(f"instances/{rid}/fly", {})
    assert status == 400


async def test_terminate_asks_first(server: Server, session: ClientSession) -> None:
    alice = new_tenant(server, "alice")
    rid = await launch(server, alice)
    await wait_state(server, rid, State.RUNNING)
    browser = await as_user(server, session, alice)
    status, page = await browser.post(f"instances/{rid}/terminate", {})
    assert status == 200 and "Really terminate" in page and 'name="confirm"' in page
    assert await state_of(server, rid) is State.RUNNING
    status, _ = await browser.post(f"instances/{rid}/terminate", {"confirm": "yes"})
    assert status == 303
    assert await state_of(server, rid) is not State.RUNNING


async def test_drain_and_enable_a_host(server: Server, session: ClientSession) -> None:
    browser = await as_user(server, session, new_tenant(server, "op", role="admin"))
    status, page = await browser.post("targets/h2/drain", {})
    assert status == 200 and "Really drain" in page
    assert (await on_server(server, targets.get(server.rt, SYSTEM, "h2"))).state == "enabled"
    assert (await browser.post("targets/h2/drain", {"confirm": "yes"}))[0] == 303
    assert (await on_server(server, targets.get(server.rt, SYSTEM, "h2"))).state == "draining"
    assert (await browser.post("targets/h2/enable", {}))[0] == 303
    assert (await on_server(server, targets.get(server.rt, SYSTEM, "h2"))).state == "enabled"
    assert (await browser.post("targets/nowhere/drain", {"confirm": "yes"}))[0] == 404


async def test_policy_errors_change_nothing(server: Server, session: ClientSession) -> None:
    browser = await as_user(server, session, new_tenant(server, "op", role="admin"))
    before = await on_server(server, policies.history(server.rt, SYSTEM))
    bad_cases = {
        '{"default": {"trigger": "sometimes"}}': "default.trigger",
        '{"default": ': "not valid JSON",
        "[default\ntrigger = 1": "not valid TOML",
        "": "empty",
    }
    for text, expected in bad_cases.items():
        status, page = await browser.post(
            "policy", {"document": text, "comment": MARKUP, "op": "save"}
        )
        assert status == 400 and expected in page and 'aria-invalid="true"' in page
        assert MARKUP not in page
    assert await on_server(server, policies.history(server.rt, SYSTEM)) == before
    good = '[default]\ntrigger = "never"\n'
    status, page = await browser.post("policy", {"document": good, "op": "test"})
    assert status == 200 and "What would happen now" in page
    assert await on_server(server, policies.history(server.rt, SYSTEM)) == before
    status, _ = await browser.post("policy", {"document": good, "comment": MARKUP, "op": "save"})
    assert status == 303
    after = await on_server(server, policies.history(server.rt, SYSTEM))
    assert len(after) == len(before) + 1 and after[0].document["default"]["trigger"] == "never"
    status, page = await browser.get("policy")
    assert status == 200 and "&lt;script&gt;" in page and MARKUP not in page


async def read_until_running(lines: Any, rid: str, seen: list[dict[str, Any]]) -> None:
    """Collect the stream's instance events until ``rid`` is reported running."""
    async with asyncio.timeout(30):
        async for line in lines:
            text = line.decode().strip()
            if text.startswith("data: "):
                item = json.loads(text[6:])
                seen.append(item)
                if item["id"] == rid and item["state"] == "running":
                    return
    raise AssertionError("the stream ended")


async def test_event_stream_shows_only_what_the_caller_may_see(
    server: Server, session: ClientSession
) -> None:
    alice, bob = new_tenant(server, "alice"), new_tenant(server, "bob")
    await as_user(server, session, alice)
    seen: list[dict[str, Any]] = []
    async with session.get(server.ui + "events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        theirs = await launch(server, bob)
        mine = await launch(server, alice)
        await read_until_running(resp.content, mine, seen)
        await wait_state(server, theirs, State.RUNNING)
        marker = await launch(server, alice)  # logged after all of bob's events
        await read_until_running(resp.content, marker, seen)
    assert {item["id"] for item in seen} == {mine, marker}
    assert [i["state"] for i in seen if i["id"] == mine][-1] == "running"


async def test_event_stream_needs_a_session(server: Server, session: ClientSession) -> None:
    async with session.get(server.ui + "events", allow_redirects=False) as resp:
        assert resp.status == 401


async def test_a_disabled_user_is_signed_out(server: Server, session: ClientSession) -> None:
    carol = new_tenant(server, "carol")
    browser = await as_user(server, session, carol)
    await on_server(server, users.set_enabled(server.rt, SYSTEM, carol.name, False))
    status, _ = await browser.get("instances")
    assert status == 303
    await on_server(server, users.set_enabled(server.rt, SYSTEM, carol.name, True))
    assert (await browser.get("instances"))[0] == 303  # the session is gone for good


async def test_forms_from_another_site_are_refused(server: Server, session: ClientSession) -> None:
    alice = new_tenant(server, "alice")
    async with session.post(
        server.ui + "login",
        data={"access_key": alice.access_key, "secret": alice.secret_key},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 403 and "Set-Cookie" not in resp.headers


async def test_buttons_follow_the_state(server: Server, session: ClientSession) -> None:
    alice = new_tenant(server, "alice")
    rid = await launch(server, alice)
    await wait_state(server, rid, State.RUNNING)
    browser = await as_user(server, session, alice)
    _, page = await browser.get(f"instances/{rid}")
    shown = re.findall(
        r'<form method="post" action="[^"]+" class="inline">\s*<input[^>]*>'
        r'\s*<button[^>]*data-verb="(\w+)"',
        page,
    )
    assert shown == ["stop", "reboot", "terminate"]


async def test_dashboard_shows_regions_peers_and_the_budget(
    server: Server, session: ClientSession
) -> None:
    admin = new_tenant(server, "op", role="admin")
    doc = {
        "targets": [
            {"name": "us-east-1", "max_spend_per_hour": 0.5, "prices": {"t3.micro": 0.0104}}
        ]
    }
    await on_server(server, policies.set_policy(server.rt, SYSTEM, doc, "budget"))
    browser = await as_user(server, session, admin)
    status, page = await browser.get("")
    assert status == 200
    assert "Burst spend this hour" in page and "us-east-1" in page and "site-b" in page
    assert "0.50" in page and 'class="spark"' in page
    user_page = (await (await as_user(server, session, new_tenant(server))).get(""))[1]
    assert "Burst spend this hour" not in user_page


async def test_instance_list_filters(server: Server, session: ClientSession) -> None:
    dave = new_tenant(server, "dave")
    first = await launch(server, dave, {"team": "blue"})
    second = await launch(server, dave, {"team": "green"})
    await wait_state(server, first, State.RUNNING)
    await wait_state(server, second, State.RUNNING)
    browser = await as_user(server, session, dave)
    await browser.post(f"instances/{second}/stop", {})
    await wait_state(server, second, State.POWEROFF)
    _, page = await browser.get("instances?q=blue")
    assert first in page and second not in page
    _, page = await browser.get("instances?state=poweroff")
    assert second in page and first not in page
    _, page = await browser.get("instances?where=local")
    assert first in page and second in page
    _, page = await browser.get("instances?where=region+us-east-1")
    assert first not in page and second not in page and "No instances match" in page
    status, _ = await browser.get("instances?state=sleeping")
    assert status == 400
    status, _ = await browser.get("instances?q=" + "x" * 500)
    assert status == 400


async def test_repeated_failed_sign_ins_are_throttled(
    server: Server, session: ClientSession
) -> None:
    """On a UI of its own (the throttle is per app), so other tests' sign-ins are unaffected."""
    alice = new_tenant(server, "alice")

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(create_app(server.rt), access_log=None, shutdown_timeout=5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}/"

    runner, base = await on_server(server, start())
    try:
        statuses = []
        for secret in ["wrong"] * 10 + [alice.secret_key]:
            async with session.post(
                base + "login",
                data={"access_key": alice.access_key, "secret": secret},
                allow_redirects=False,
            ) as resp:
                statuses.append(resp.status)
        assert statuses == [401] * 10 + [429]
    finally:
        await on_server(server, runner.cleanup())


async def test_the_dashboard_figures_alone_for_the_live_refresh(
    server: Server, session: ClientSession
) -> None:
    browser = Browser(server, session)
    status, text = await browser.get("dashboard/live")
    assert status != 200 and "by-state" not in text  # signed out: nothing of the dashboard
    await browser.sign_in(new_tenant(server, "fragment"))
    rid = await launch(server, new_tenant(server, "other"), {"Name": "<b>x</b>"})
    status, text = await browser.get("dashboard/live")
    assert status == 200 and 'id="by-state"' in text and "<html" not in text
    assert text.lstrip().startswith('<div id="dashboard-live"') and rid not in text
