"""OCCI frontend throughput: a 1,000-compute collection GET and compute creates, over HTTP.

One run, one machine, one SQLite database. A user owns 1,000 computes (launched in one batch,
left pending: no scheduler runs). Figures, each the median of ``--repeat`` timed requests over
one keep-alive connection:

- ``get_<rendering>_ms``: GET /compute/ in text/plain, text/uri-list and application/occi+json,
  again and again as a polling client does (nothing changes between two: the kept answer);
- ``get_<rendering>_after_a_change_ms``: the same with a commit (one compute's hostname)
  before each GET, so every answer is made anew;
- ``bare_<rendering>_ms``: the baseline, a bare aiohttp handler on the same loop returning the
  same bytes with the same content type; ``ratio_<rendering>`` = ours / bare (target <= 3);
- ``creates_per_s``: POST /compute/ (text/plain, os_tpl + resource_tpl) for ``--seconds``
  from ``--workers`` client processes (target >= 1,000/s), each sending the same request again
  and again over one keep-alive socket and reading the reply by its Content-Length, as
  :mod:`bench.ec2` drives its servers: a few microseconds of client work per request, in
  processes of their own, so the server is what is measured; ``bare_posts_per_s`` the same
  requests against the bare handler. 32 clients keep the server busy: with 16, creates are
  written in batches of 15, nearly every client waits on the same commit, and the loop sits
  idle between batches (about 15% of the time in a profile), so the figure measured the round
  trip rather than what the server can take; 64 clients make it no faster than 32.

``python -m bench.occi`` prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import insert, select, update

from bench.ec2 import load
from broker import model as m
from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.config import from_mapping
from broker.service import images, instances, targets, users
from frontends.occi.app import create_app

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
OS = "http://schemas.cloudbroker.org/occi/templates/os#"
RES = "http://schemas.cloudbroker.org/occi/templates/resource#"
RENDERINGS = {
    "text_plain": "text/plain",
    "uri_list": "text/uri-list",
    "json": "application/occi+json",
}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _timed_gets(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    repeat: int,
    between: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, bytes, str]:
    """Median ms of ``repeat`` GETs (after two untimed); ``between`` runs, untimed, before each."""
    times: list[float] = []
    body, ctype = b"", ""
    for _ in range(repeat + 2):
        if between is not None:
            await between()
        start = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            body = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            assert resp.status == 200, (resp.status, body[:200])
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1000, body, ctype


async def _posts(
    url: str, headers: dict[str, str], body: bytes, workers: int, seconds: float
) -> float:
    """Creates per second from ``workers`` client processes for ``seconds`` (the server keeps
    running on this loop meanwhile)."""
    port = int(url.rpartition(":")[2])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = (
        f"POST /compute/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = await asyncio.to_thread(load, port, raw, workers, seconds, 201)
    return float(result["rps"])


async def _setup(tmp: Path) -> tuple[Any, Caller, str, str, str]:
    cfg = from_mapping(
        {"broker": {"data_dir": str(tmp), "local_host": "none", "seed": False}}, env={}
    )
    rt = await open_runtime(cfg, migrate=True)
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Flavor).values(name="m1.small", vcpus=1, memory_mb=2048, disk_gb=10)
        )
        await targets.ensure_cluster(conn, "bench-a")
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    creds = await users.create_user(rt, SYSTEM, "bench")
    caller = Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)
    await instances.launch(
        rt, caller, instances.LaunchRequest(image.id, "m1.small", min_count=1000, max_count=1000)
    )
    basic = base64.b64encode(f"{creds.access_key}:{creds.secret_key}".encode()).decode()
    return rt, caller, image.id, "Basic " + basic, creds.access_key


async def run(repeat: int, workers: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        rt, _caller, image_id, auth, _ = await _setup(Path(tmpdir))
        async with rt.engine.connect() as conn:
            some_id = (await conn.execute(select(m.Instance.id).limit(1))).scalar_one()
        ours, ours_url = await _serve(create_app(rt))
        replies: dict[str, tuple[bytes, str]] = {}

        async def bare_get(request: web.Request) -> web.Response:
            body, ctype = replies[request.headers["Accept"]]
            return web.Response(body=body, headers={"Content-Type": ctype})

        created = b""

        async def bare_post(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=created, status=201, headers={"Location": "/compute/x"})

        bare_app = web.Application()
        bare_app.router.add_get("/compute/", bare_get)
        bare_app.router.add_post("/compute/", bare_post)
        bare, bare_url = await _serve(bare_app)
        out: dict[str, Any] = {"computes": 1000, "repeat": repeat}
        touched = 0

        async def touch() -> None:
            """A commit before a GET, so its kept answer is stale: the figure after a change."""
            nonlocal touched
            touched += 1
            async with rt.engine.begin() as conn:
                await conn.execute(
                    update(m.Instance)
                    .where(m.Instance.id == some_id)
                    .values(hostname=f"touched-{touched}")
                )

        try:
            async with aiohttp.ClientSession() as session:
                for name, accept in RENDERINGS.items():
                    headers = {"Authorization": auth, "Accept": accept}
                    ms, body, ctype = await _timed_gets(
                        session, ours_url + "/compute/", headers, repeat
                    )
                    replies[accept] = (body, ctype)
                    base, _, _ = await _timed_gets(session, bare_url + "/compute/", headers, repeat)
                    out[f"get_{name}_ms"] = round(ms, 3)
                    out[f"bare_{name}_ms"] = round(base, 3)
                    out[f"ratio_{name}"] = round(ms / base, 2)
                    changed, _, _ = await _timed_gets(
                        session, ours_url + "/compute/", headers, repeat, touch
                    )
                    out[f"get_{name}_after_a_change_ms"] = round(changed, 3)
                    out[f"ratio_{name}_after_a_change"] = round(changed / base, 2)
                    out[f"{name}_bytes"] = len(body)
                post_body = (
                    f'Category: compute; scheme="{INFRA}"; class="kind"\n'
                    f'Category: {image_id}; scheme="{OS}"; class="mixin"\n'
                    f'Category: m1.small; scheme="{RES}"; class="mixin"\n'
                ).encode()
                headers = {"Authorization": auth, "Content-Type": "text/plain"}
                async with session.post(
                    ours_url + "/compute/", headers=headers, data=post_body
                ) as resp:
                    created = await resp.read()
                    assert resp.status == 201, created
                rate = await _posts(ours_url, headers, post_body, workers, seconds)
                base_rate = await _posts(bare_url, headers, post_body, workers, seconds)
                out["create_workers"] = workers
                out["creates_per_s"] = round(rate, 1)
                out["bare_posts_per_s"] = round(base_rate, 1)
                out["ratio_creates"] = round(base_rate / rate, 2)
        finally:
            await ours.cleanup()
            await bare.cleanup()
            await rt.aclose()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--workers", type=int, default=32, help="client processes for creates")
    parser.add_argument("--seconds", type=float, default=4.0, help="creates measured for")
    args = parser.parse_args()
    result = asyncio.run(run(args.repeat, args.workers, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
