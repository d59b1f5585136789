"""The web interface in a real browser: Debian's Chromium, headless, driven by Playwright.

Chromium comes from the distribution (``apt-get install chromium``) and Playwright from pip;
the test command installs both, and a missing one fails these tests rather than skipping
them. The tests wait on conditions (Playwright's ``expect``), never on fixed sleeps, and save
screenshots of the main pages to ``docs/screenshots`` for the README.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from broker import model as m
from broker.model import utcnow
from tests.frontends.web.conftest import Server, Tenant, ec2_client, new_tenant

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
MARKUP = '<img src=x onerror="document.title=1"><b>web</b>'
WAIT = 30_000
GOOD_POLICY = """\
[default]
trigger = "no_local_fit"

[[targets]]
name = "us-east-1"
max_instances = 4
max_spend_per_hour = 0.50
prices = { "t3.micro" = 0.0104 }
"""


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    """Chromium from Debian, headless (after the server, so it closes before the server)."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail("Chromium is missing: apt-get install chromium (the test command does)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install playwright (the test command does)")
    expect.set_options(timeout=WAIT)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(browser: Any, server: Server, tenant: Tenant, **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(WAIT)
    page.goto(server.ui)
    page.fill("#access_key", tenant.access_key)
    page.fill("#secret", tenant.secret_key)
    page.click("#signin")
    page.wait_for_url(server.ui)
    return page


def test_launch_watch_and_stop_an_instance(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    alice, bob = new_tenant(server, "alice"), new_tenant(server, "bob")
    page = sign_in(browser, server, alice)
    expect(page.locator("#whoami")).to_contain_text(alice.name)
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("table.hosts")).to_contain_text("h1")
    SHOTS.mkdir(parents=True, exist_ok=True)

    page.click("nav >> text=Instances")
    expect(page.locator("#live")).to_have_class("live on")
    page.evaluate("window.__sameDocument = true")
    ec2 = ec2_client(server, alice)
    made = ec2.run_instances(
        ImageId=server.image_id,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": MARKUP}]}
        ],
    )
    rid = made["Instances"][0]["InstanceId"]
    row = page.locator(f'tr[data-instance="{rid}"]')
    expect(row.locator(".istate")).to_have_text("running")
    assert page.evaluate("window.__sameDocument") is True  # appeared and ran without a reload
    expect(row.locator(".iwhere")).to_have_text("local")
    page.screenshot(path=str(SHOTS / "instances.png"), full_page=True)

    row.locator('button[data-verb="stop"]').click()
    page.wait_for_url(server.ui + "instances")
    expect(page.locator(f'tr[data-instance="{rid}"] .istate')).to_have_text("poweroff")
    assert ec2.describe_instances(InstanceIds=[rid])["Reservations"][0]["Instances"][0]["State"][
        "Name"
    ] in ("stopped", "stopping")

    page.click(f'tr[data-instance="{rid}"] a.iid')
    expect(page.locator("h1 small")).to_have_text(MARKUP)  # the tag stays text
    assert page.title() != "1" and page.locator("h1 b").count() == 0
    expect(page.locator("#events")).to_contain_text("stop")
    expect(page.locator("#placement")).to_contain_text("h")
    expect(page.locator("pre.console")).to_contain_text(f"console of {rid}")
    page.locator('button[data-verb="start"]').click()  # and back up, watched on this page
    page.wait_for_url(server.ui + f"instances/{rid}")
    expect(page.locator(".istate")).to_have_text("running")
    expect(page.locator("#events tbody tr").last).to_contain_text("running")
    expect(page.locator('button[data-verb="stop"]')).to_be_visible()
    expect(page.locator('button[data-verb="start"]')).to_be_hidden()
    page.evaluate("window.__sameDocument = true")
    rows = page.locator("#events tbody tr").count()
    ec2.stop_instances(InstanceIds=[rid])  # from elsewhere: the open page follows
    expect(page.locator(".istate")).to_have_text("poweroff")
    expect(page.locator("#events tbody tr").last).to_contain_text("shutdown → poweroff")
    assert page.locator("#events tbody tr").count() == rows + 2  # running → shutdown → poweroff
    expect(page.locator('button[data-verb="start"]')).to_be_visible()
    expect(page.locator('button[data-verb="stop"]')).to_be_hidden()
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(SHOTS / "instance.png"), full_page=True)
    page.click("nav >> text=Dashboard")
    expect(page.locator("#by-where")).to_contain_text("local 1")
    expect(page.locator("#by-state")).to_contain_text("poweroff 1")
    page.evaluate("window.__sameDocument = true")
    ec2.start_instances(InstanceIds=[rid])  # the dashboard's counts follow the event stream
    expect(page.locator("#by-state")).to_contain_text("running 1")
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
    page.context.close()

    other = sign_in(browser, server, bob)
    other.goto(server.ui + "instances")
    expect(other.locator("h1")).to_have_text("Instances")
    assert rid not in other.content()
    response = other.goto(server.ui + f"instances/{rid}")
    assert response is not None and response.status == 404
    other.context.close()


async def _record_alike(server: Server, rid: str, at: dt.datetime) -> None:
    """A transition event at ``at``: called twice, two events alike in every shown cell."""
    async with server.rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Event).values(
                resource_id=rid,
                kind="transition",
                actor="monitor",
                from_state="running",
                to_state="running",
                message="alike",
                at=at,
            )
        )


def test_events_alike_within_one_second_each_get_a_row(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    carol = new_tenant(server, "carol")
    ec2 = ec2_client(server, carol)
    rid = ec2.run_instances(
        ImageId=server.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    page = sign_in(browser, server, carol)
    page.goto(server.ui + f"instances/{rid}")
    expect(page.locator(".istate")).to_have_text("running")
    expect(page.locator("#live")).to_have_class("live on")
    rows = page.locator("#events tbody tr")
    before = rows.count()
    at = utcnow()
    server.run(_record_alike(server, rid, at))
    expect(rows).to_have_count(before + 1)
    # the same second, actor, change and message as the row on the page: still a new event
    server.run(_record_alike(server, rid, at))
    expect(rows).to_have_count(before + 2)
    page.reload()  # as rendered, each row carries its event's id
    expect(rows).to_have_count(before + 2)
    ids = rows.evaluate_all("rs => rs.map(r => r.dataset.event)")
    assert len(set(ids)) == len(ids) and all(i and i.isdigit() for i in ids)
    page.context.close()


def test_edit_a_burst_policy(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    admin = new_tenant(server, "op", role="admin")
    page = sign_in(browser, server, admin)
    page.click("nav >> text=Hosts")
    page.locator('tr[data-target="h2"] button[data-verb="drain"]').click()
    expect(page.locator("h1")).to_contain_text("Really drain the host h2")  # asks first
    page.click("#confirm")
    expect(page.locator('tr[data-target="h2"] .state')).to_have_text("draining")
    page.screenshot(path=str(SHOTS / "hosts.png"), full_page=True)
    page.locator('tr[data-target="h2"] button[data-verb="enable"]').click()
    expect(page.locator('tr[data-target="h2"] .state')).to_have_text("enabled")

    page.click("nav >> text=Burst policy")
    page.fill("#document", '{"default": {"trigger": "sometimes"}}')
    page.fill("#comment", "first try")
    page.click("#save")
    expect(page.locator("#policy-error")).to_contain_text("default.trigger")
    expect(page.locator("#document")).to_have_value('{"default": {"trigger": "sometimes"}}')
    expect(page.locator("#history")).not_to_contain_text("first try")

    page.fill("#document", GOOD_POLICY)
    page.click("#test")
    expect(page.locator("#test-result")).to_contain_text("pending instance")
    page.fill("#comment", "bursting off for the weekend")
    page.click("#save")
    expect(page.locator("#saved")).to_contain_text("Saved as version")
    expect(page.locator("#history")).to_contain_text("bursting off for the weekend")
    expect(page.locator("#document")).to_contain_text("us-east-1")
    page.screenshot(path=str(SHOTS / "policies.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.click("nav >> text=Dashboard")
    expect(page.locator("#spend")).to_contain_text("us-east-1")
    expect(page.locator("#spend")).to_contain_text("0.50")
    page.screenshot(path=str(SHOTS / "dashboard-phone.png"), full_page=True)
    page.context.close()
