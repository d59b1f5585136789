"""The hook routes of the admin API over real HTTP: add, list, show, the log of real runs,
remove; bad input answered as JSON errors that change nothing; hooks are for admins only.
And the ``cloudbroker hook`` commands against a real ``serve``, with /metrics scraped there.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from sqlalchemy import func, select

from broker import model as m
from broker.auth import SYSTEM
from broker.hooks import HookRunner, HookSettings
from broker.monitor import Monitor
from broker.runtime import Runtime
from broker.service import targets, users
from tests.broker.test_serve import Server, cli, cli_json, server, wait_state
from tests.frontends.admin.conftest import API, admin_api, call

__all__ = ["server"]


@pytest.fixture
async def api(sqlite_rt: Runtime) -> AsyncIterator[API]:
    async with admin_api(sqlite_rt) as served:
        yield served


def executable(tmp: Path, name: str, body: str) -> str:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def test_hooks_through_the_api_and_the_log_of_real_runs(
    api: API, sqlite_rt: Runtime, tmp_path: Path
) -> None:
    rt = sqlite_rt
    echo = executable(tmp_path, "echo.sh", 'echo "$CLOUDBROKER_EVENT $CLOUDBROKER_TARGET"\n')
    status, made = await call(
        api,
        "POST",
        "/api/v1/hooks",
        json={
            "name": "peer-watch",
            "kind": "script",
            "command": echo,
            "events": ["peer.down", "peer.up"],
            "filters": {"target": "far"},
            "timeout": 5,
        },
    )
    assert status == 201, made
    assert made["id"].startswith("hook-") and made["filters"] == {"target": ["far"]}
    status, web_hook = await call(
        api,
        "POST",
        "/api/v1/hooks",
        json={
            "name": "web",
            "kind": "webhook",
            "command": "https://ops.example.com/hooks?token=abc",
            "events": "host.error",
            "enabled": False,
        },
    )
    assert status == 201 and web_hook["enabled"] is False and web_hook["timeout_s"] == 10.0
    status, listed = await call(api, "GET", "/api/v1/hooks")
    assert status == 200 and [h["name"] for h in listed] == ["peer-watch", "web"]
    status, enabled = await call(api, "POST", "/api/v1/hooks/web/enable")
    assert status == 200 and enabled["enabled"] is True
    status, paused = await call(api, "POST", "/api/v1/hooks/web/disable")
    assert status == 200 and paused == {**enabled, "enabled": False}
    status, shown = await call(api, "GET", f"/api/v1/hooks/{made['id']}")
    assert status == 200 and shown == made
    assert await call(api, "GET", "/api/v1/hooks/peer-watch/runs") == (200, [])

    await targets.add(
        rt,
        SYSTEM,
        name="far",
        kind="peer",
        driver="peer",
        settings={"url": "http://127.0.0.1:9", "site": "here", "connect_timeout": 1.0},
        secret={"access_key": "AKCBNOTHING", "secret_key": "nothing"},
        validate=False,
    )
    rt.config = dataclasses.replace(
        rt.config, monitor=dataclasses.replace(rt.config.monitor, misses=1)
    )
    runner = HookRunner(rt, HookSettings(poll_interval=0.02))
    await runner.start()
    await Monitor(rt).cycle()
    assert await runner.step() >= 1
    await runner.drain()
    await runner.aclose()
    status, log = await call(api, "GET", "/api/v1/hooks/peer-watch/runs")
    assert status == 200 and len(log) == 1, log
    assert log[0]["status"] == "ok" and log[0]["exit_code"] == 0
    assert log[0]["output"] == "peer.down far\n" and log[0]["hook"] == "peer-watch"
    status, every = await call(api, "GET", "/api/v1/hook-runs?status=ok&limit=5")
    assert status == 200 and every == log
    assert await call(api, "GET", "/api/v1/hook-runs?status=failed") == (200, [])

    assert (await call(api, "DELETE", "/api/v1/hooks/peer-watch"))[0] == 204
    assert (await call(api, "GET", "/api/v1/hooks/peer-watch"))[0] == 404
    status, listed = await call(api, "GET", "/api/v1/hooks")
    assert [h["name"] for h in listed] == ["web"]


GOOD = {"name": "h", "kind": "webhook", "command": "http://127.0.0.1:1/x", "events": ["peer.down"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/api/v1/hooks", {**GOOD, "command": "ftp://h/x"}, 400, "http or https"),
        ("POST", "/api/v1/hooks", {**GOOD, "command": "http:///x"}, 400, "no host"),
        ("POST", "/api/v1/hooks", {**GOOD, "command": "http://h:70000/"}, 400, "webhook URL"),
        ("POST", "/api/v1/hooks", {**GOOD, "command": "http://h/ x"}, 400, "webhook URL"),
        ("POST", "/api/v1/hooks", {**GOOD, "command": 7}, 400, "string"),
        ("POST", "/api/v1/hooks", {**GOOD, "events": ["vm.boom"]}, 400, "unknown event"),
        ("POST", "/api/v1/hooks", {**GOOD, "events": []}, 400, "at least one event"),
        ("POST", "/api/v1/hooks", {**GOOD, "timeout": -5}, 400, "above 0"),
        ("POST", "/api/v1/hooks", {**GOOD, "timeout": "soon"}, 400, "number"),
        ("POST", "/api/v1/hooks", {**GOOD, "timeout": True}, 400, "number"),
        ("POST", "/api/v1/hooks", {**GOOD, "filters": {"x": "y"}}, 400, "unknown filter"),
        ("POST", "/api/v1/hooks", {**GOOD, "kind": "pager"}, 400, "kind"),
        ("POST", "/api/v1/hooks", {**GOOD, "kind": "script"}, 400, "absolute"),
        ("POST", "/api/v1/hooks", {**GOOD, "name": "a/b"}, 400, "invalid hook name"),
        ("POST", "/api/v1/hooks", {**GOOD, "enabled": "yes"}, 400, "enabled"),
        ("POST", "/api/v1/hooks", {**GOOD, "colour": "red"}, 400, "unknown field"),
        ("POST", "/api/v1/hooks", {"kind": "webhook"}, 400, "'name' is required"),
        ("POST", "/api/v1/hooks", [GOOD], 400, "JSON object"),
        ("POST", "/api/v1/hooks", {**GOOD, "name": "taken"}, 409, "exists"),
        ("GET", "/api/v1/hooks/nosuch", None, 404, "'nosuch'"),
        ("DELETE", "/api/v1/hooks/nosuch", None, 404, "'nosuch'"),
        ("POST", "/api/v1/hooks/nosuch/disable", None, 404, "'nosuch'"),
        ("GET", "/api/v1/hooks/nosuch/runs", None, 404, "'nosuch'"),
        ("GET", "/api/v1/hook-runs?status=meh", None, 400, "status"),
        ("GET", "/api/v1/hook-runs?limit=0", None, 400, "limit"),
        ("GET", "/api/v1/hook-runs?limit=x", None, 400, "integer"),
    ],
)
async def test_bad_input_is_a_clear_error_and_changes_nothing(
    api: API,
    sqlite_rt: Runtime,
    method: str,
    path: str,
    body: Any,
    status: int,
    words: str,
) -> None:
    assert (await call(api, "POST", "/api/v1/hooks", json={**GOOD, "name": "taken"}))[0] == 201
    _, before = await call(api, "GET", "/api/v1/hooks")
    async with sqlite_rt.engine.connect() as conn:
        events = await conn.scalar(select(func.count()).select_from(m.Event))
    got, answer = await call(api, method, path, json=body)
    assert got == status, answer
    assert words in answer["error"]["message"], answer
    assert await call(api, "GET", "/api/v1/hooks") == (200, before)
    async with sqlite_rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(m.Event)) == events


async def test_hooks_are_for_admins_only(api: API, sqlite_rt: Runtime) -> None:
    assert (await call(api, "POST", "/api/v1/hooks", json=GOOD))[0] == 201
    await users.create_user(sqlite_rt, SYSTEM, "carol")
    token = await users.issue_token(sqlite_rt, SYSTEM, "carol")
    srv, _ = api
    async with ClientSession(headers={"Authorization": f"Bearer {token}"}) as carol:
        for method, path, body in (
            ("POST", "/api/v1/hooks", {**GOOD, "name": "carols"}),
            ("GET", "/api/v1/hooks", None),
            ("GET", "/api/v1/hooks/h", None),
            ("DELETE", "/api/v1/hooks/h", None),
            ("POST", "/api/v1/hooks/h/disable", None),
            ("GET", "/api/v1/hooks/h/runs", None),
            ("GET", "/api/v1/hook-runs", None),
        ):
            async with carol.request(method, srv.make_url(path), json=body) as resp:
                assert resp.status == 403, (method, path)
        async with carol.get(srv.make_url("/metrics")) as resp:
            assert resp.status == 200  # any user's token may scrape
    async with ClientSession() as anonymous, anonymous.get(srv.make_url("/api/v1/hooks")) as resp:
        assert resp.status == 401
    _, listed = await call(api, "GET", "/api/v1/hooks")
    assert [h["name"] for h in listed] == ["h"]


# --- the CLI against `serve` (needs the admin routes, the runner and the `hook` command wired) ---


class Collector(http.server.BaseHTTPRequestHandler):
    got: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.got.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []
    handler = type("Sink", (Collector,), {"got": got})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", got
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cli_hook_commands_against_serve(
    server: Server, webhook_sink: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    cfg = server.cfg
    url, got = webhook_sink
    out = tmp_path / "ran.json"
    sh = executable(tmp_path, "on-running.sh", f'cat > "{out}"\necho done\n')
    made = cli_json(
        cfg, "hook", "add", "on-running", "--script", sh, "--on", "instance.state",
        "--filter", "to_state=running", "--timeout", "5",
    )  # fmt: skip
    assert isinstance(made, dict) and made["filters"] == {"to_state": ["running"]}
    cli(cfg, "hook", "add", "sink", "--webhook", url, "--on", "instance.state")
    listed = cli_json(cfg, "hook", "list")
    assert isinstance(listed, list) and [h["name"] for h in listed] == ["on-running", "sink"]
    for args, words in (
        (("hook", "add", "x", "--webhook", "gopher://h/", "--on", "peer.down"), "http or https"),
        (("hook", "add", "x", "--webhook", url, "--on", "vm.exploded"), "unknown event"),
        (("hook", "add", "x", "--webhook", url, "--on", "peer.down", "--timeout", "-1"), "above 0"),
        (("hook", "add", "x", "--on", "peer.down"), "exactly one of"),
        (("hook", "add", "x", "--webhook", url, "--on", "peer.down", "--filter", "x"), "KEY=VALUE"),
        (("hook", "remove", "nosuch"), "'nosuch'"),
        (("hook", "log", "nosuch"), "'nosuch'"),
    ):
        result = cli(cfg, *args, check=False)
        assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert cli_json(cfg, "hook", "list") == listed

    saved = json.loads((cfg.parent / "data" / "operator.json").read_text())
    images = cli_json(cfg, "image", "list")
    assert isinstance(images, list)
    from broker.client import AdminClient

    client = AdminClient(saved["url"], saved["token"])
    (inst,) = client.call(
        "POST", "/api/v1/instances", {"image": images[0]["id"], "flavor": "t3.micro"}
    )
    wait_state(cfg, inst["id"], "running")
    deadline = time.monotonic() + 30
    while not out.exists() or not any(p["to_state"] == "running" for p in got):
        assert time.monotonic() < deadline, "the hooks did not run"
        time.sleep(0.1)
    payload = json.loads(out.read_text())
    assert payload["resource_id"] == inst["id"] and payload["event"] == "instance.state"
    assert payload["target"]["name"] == "local-simulated"
    assert {(p["from_state"], p["to_state"]) for p in got if p["resource_id"] == inst["id"]} >= {
        ("pending", "prolog"),
    }
    log = cli_json(cfg, "hook", "log", "on-running")
    assert isinstance(log, list) and log[0]["status"] == "ok" and log[0]["output"] == "done\n"
    assert cli(cfg, "hook", "log", "--output").returncode == 0

    req = urllib.request.Request(saved["url"] + "/metrics")
    req.add_header("Authorization", f"Bearer {saved['token']}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    for family in (
        "cloudbroker_api_requests_total",
        "cloudbroker_api_request_duration_seconds_bucket",
        "cloudbroker_instances{",
        "cloudbroker_target_cpus{",
        "cloudbroker_scheduler_cycle_seconds_count",
        "cloudbroker_scheduler_queue_length{",
        "cloudbroker_target_up{",
    ):
        assert family in text, family
    removed = cli_json(cfg, "hook", "remove", "sink")
    assert removed == {"removed": "sink"}
    assert [h["name"] for h in cli_json(cfg, "hook", "list")] == ["on-running"]  # type: ignore[union-attr]
