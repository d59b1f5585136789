"""Hooks: which entries of the event log fire which operator scripts and webhooks, and how.

Decides three things. *Which hook event an entry of the event log is*: an instance changing
state (``instance.state``) or failing an action (``instance.error``); a target going to error
(``host.error``, ``region.error``, ``peer.down``) or answering again (``host.recovered``,
``region.recovered``, ``peer.up``); an instance placed on a public-cloud region
(``burst.started``); a burst budget reached (``budget.reached``: a ``budget`` entry, or a
launch the EC2 backend refused because its budget is spent). *Which hooks match*: the hook
subscribes to the event name and every filter it sets (``to_state``, ``from_state``,
``target`` name or id, ``target_kind``, ``resource`` id) holds. *How a run goes*: a script gets
the event as JSON on stdin and in ``CLOUDBROKER_*`` variables, in a session of its own that is
killed whole at the hook's timeout; a webhook gets it POSTed as JSON with that timeout. Every
run becomes a :class:`~broker.model.HookRun` (ok | failed | timeout, exit code or HTTP
status, the first few KB of output).

The runner tails the event log by id, so the writers never wait for it and nothing is missed:
ids that are skipped (a PostgreSQL transaction that took an id and has not committed yet) are
asked for again until they appear or ``gap_wait`` passes. At most ``concurrency`` runs go at
once; when all are busy the runner stops reading until one ends, so the backlog stays in the
log, not in memory. A hook that fails or hangs costs one slot until its timeout, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
from sqlalchemy import func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import model as m
from broker.config import HooksSection as HookSettings
from broker.events import EventRecord
from broker.groupcommit import GroupCommit
from broker.protocols import Decision, TargetSnapshot
from broker.runtime import Runtime

log = logging.getLogger(__name__)

TARGET_DOWN = {"host": "host.error", "region": "region.error", "peer": "peer.down"}
TARGET_UP = {"host": "host.recovered", "region": "region.recovered", "peer": "peer.up"}
EVENTS: tuple[str, ...] = (
    "instance.state",
    "instance.error",
    *TARGET_DOWN.values(),
    *TARGET_UP.values(),
    "burst.started",
    "budget.reached",
)
FILTERS = ("to_state", "from_state", "target", "target_kind", "resource")
BUDGET_REFUSAL = "removed by burst policy: budget of "
ENV_VALUE_LIMIT = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class TargetInfo:
    id: str
    name: str
    kind: str


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    """One entry of the event log, as the runner reads it."""

    id: int
    at: dt.datetime
    resource_id: str
    kind: str
    actor: str
    from_state: str
    to_state: str
    message: str
    detail: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class HookEvent:
    """What a hook is told: one named event about one resource."""

    name: str
    row: EventRow
    target: TargetInfo | None

    def fields(self) -> dict[str, tuple[str, ...]]:
        """The values each filter is matched against."""
        t = self.target
        return {
            "to_state": (self.row.to_state,),
            "from_state": (self.row.from_state,),
            "resource": (self.row.resource_id,),
            "target": (t.name, t.id) if t else (),
            "target_kind": (t.kind,) if t else (),
        }

    def payload(self) -> dict[str, Any]:
        r, t = self.row, self.target
        return {
            "event": self.name,
            "event_id": r.id,
            "at": r.at.isoformat().replace("+00:00", "Z"),
            "resource_id": r.resource_id,
            "kind": r.kind,
            "actor": r.actor,
            "from_state": r.from_state,
            "to_state": r.to_state,
            "message": r.message,
            "target": dataclasses.asdict(t) if t else None,
            "detail": dict(r.detail),
        }

    def environment(self, hook: str) -> dict[str, str]:
        t = self.target
        values = {
            "HOOK": hook,
            "EVENT": self.name,
            "EVENT_ID": str(self.row.id),
            "RESOURCE_ID": self.row.resource_id,
            "FROM_STATE": self.row.from_state,
            "TO_STATE": self.row.to_state,
            "MESSAGE": self.row.message,
            "TARGET": t.name if t else "",
            "TARGET_ID": t.id if t else "",
            "TARGET_KIND": t.kind if t else "",
        }
        return {
            f"CLOUDBROKER_{k}": v.replace("\x00", "")[:ENV_VALUE_LIMIT] for k, v in values.items()
        }


def classify(
    row: EventRow, targets: Mapping[str, TargetInfo], on_target: Mapping[str, str | None]
) -> list[HookEvent]:
    """The hook events one entry of the log is (none for most audit entries).

    ``targets`` maps target ids to targets; ``on_target`` instance ids to their target id now.
    """
    rid, kind = row.resource_id, row.kind
    if rid in targets and kind == "transition":
        t = targets[rid]
        if row.to_state == "error" and row.from_state != "error" and t.kind in TARGET_DOWN:
            return [HookEvent(TARGET_DOWN[t.kind], row, t)]
        if row.from_state == "error" and row.to_state != "error" and t.kind in TARGET_UP:
            return [HookEvent(TARGET_UP[t.kind], row, t)]
        return []
    if kind == "budget":
        return [HookEvent("budget.reached", row, targets.get(rid))]
    if rid not in on_target or kind not in ("transition", "error"):
        return []
    placed = str(row.detail.get("target") or "")
    target = targets.get(placed) or targets.get(on_target[rid] or "")
    out = []
    if kind == "error":
        out.append(HookEvent("instance.error", row, target))
        if "burst budget of" in row.message:
            out.append(HookEvent("budget.reached", row, target))
    if row.to_state and row.from_state != row.to_state:
        out.append(HookEvent("instance.state", row, target))
    burst = (row.from_state, row.to_state) == ("pending", "prolog")
    if kind == "transition" and burst and target is not None and target.kind == "region":
        out.append(HookEvent("burst.started", row, target))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class HookSpec:
    id: str
    name: str
    kind: str  # script | webhook
    command: str
    events: frozenset[str]
    filters: Mapping[str, tuple[str, ...]]
    timeout_s: float

    def matches(self, event: HookEvent) -> bool:
        if event.name not in self.events:
            return False
        fields = event.fields()
        return all(set(fields.get(k, ())) & set(allowed) for k, allowed in self.filters.items())


def budget_events(
    decisions: Sequence[Decision], targets: Sequence[TargetSnapshot], reported: set[str]
) -> list[EventRecord]:
    """``budget`` entries for the burst targets a placement batch first found at their budget.

    ``reported`` holds the names already reported (the scheduler keeps it between cycles); a
    name leaves it when a decision of the batch considered that target and was not refused by
    its budget, so reaching the budget again is reported again.
    """
    by_name = {t.name: t for t in targets}
    refused: dict[str, str] = {}
    fine: set[str] = set()
    for d in decisions:
        for name, why in d.considered.items():
            if why.startswith(BUDGET_REFUSAL):
                refused.setdefault(name, why.removeprefix("removed by burst policy: "))
            else:
                fine.add(name)
    reported.difference_update(fine - set(refused))
    out = []
    for name, why in refused.items():
        snap = by_name.get(name)
        if name in reported or snap is None:
            continue
        reported.add(name)
        out.append(
            EventRecord(snap.id, "budget", "scheduler", message=why, detail={"target": name})
        )
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # ok | failed | timeout
    exit_code: int | None
    output: str


def _text(raw: bytes | bytearray, limit: int) -> str:
    # PostgreSQL text holds no NUL
    return bytes(raw[:limit]).decode("utf-8", errors="replace").replace("\x00", "\\0")


async def _collect(stream: asyncio.StreamReader | None, kept: bytearray, limit: int) -> None:
    """Read ``stream`` to its end, keeping only its first ``limit`` bytes."""
    if stream is None:
        return
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]


def _kill_session(proc: asyncio.subprocess.Process) -> None:
    """Kill the script and everything it started (it leads a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _base_environment() -> dict[str, str]:
    """What a script inherits: not the broker's environment, which may hold credentials."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


class HookRunner:
    """Tails the event log and runs the hooks that match, a bounded number at once."""

    def __init__(self, rt: Runtime, settings: HookSettings | None = None) -> None:
        self.rt = rt
        self.settings = settings or HookSettings()
        self.cursor: int | None = None
        self._gaps: dict[int, float] = {}  # event id not seen yet -> give up at (monotonic)
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runs: GroupCommit[dict[str, Any]] = GroupCommit(self._write_runs)

    async def start(self, after: int | None = None) -> None:
        """Begin after event ``after`` (default: the newest now; history is not replayed)."""
        if after is None:
            async with self.rt.reader.connect() as conn:
                after = int(await conn.scalar(select(func.max(m.Event.id))) or 0)
        self.cursor = after

    async def run(self) -> None:
        """Read and run until cancelled; runs in progress are killed on the way out."""
        if self.cursor is None:
            await self.start()
        try:
            while True:
                try:
                    read = await self.step()
                except Exception:  # the loop must survive anything one read meets
                    log.exception("reading the event log for hooks failed")
                    read = 0
                if read < self.settings.batch:
                    await asyncio.sleep(self.settings.poll_interval)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Kill the runs in progress and close the HTTP session."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self) -> None:
        """Wait for the runs started so far (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def step(self) -> int:
        """Read the next events, start the runs they call for; returns how many were read."""
        assert self.cursor is not None
        now = time.monotonic()
        self._gaps = {i: until for i, until in self._gaps.items() if until > now}
        cond = m.Event.id > self.cursor
        if self._gaps:
            cond = or_(cond, m.Event.id.in_(sorted(self._gaps)[:1000]))
        async with self.rt.reader.connect() as conn:
            hooks = await self._hooks(conn)
            if not hooks:  # nothing to run: the ids are enough to move past the events
                ids = (
                    await conn.scalars(
                        select(m.Event.id)
                        .where(cond)
                        .order_by(m.Event.id)
                        .limit(self.settings.batch)
                    )
                ).all()
                for eid in ids:
                    self._advance(eid, now)
                return len(ids)
            rows = [
                EventRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8] or {})
                for r in await conn.execute(
                    select(
                        m.Event.id,
                        m.Event.at,
                        m.Event.resource_id,
                        m.Event.kind,
                        m.Event.actor,
                        m.Event.from_state,
                        m.Event.to_state,
                        m.Event.message,
                        m.Event.detail,
                    )
                    .where(cond)
                    .order_by(m.Event.id)
                    .limit(self.settings.batch)
                )
            ]
            if not rows:
                return 0
            targets, on_target = await self._context(conn, rows)
        for row in rows:
            self._advance(row.id, now)
            for event in classify(row, targets, on_target):
                for hook in hooks:
                    if hook.matches(event):
                        await self._start(hook, event)
        return len(rows)

    def _advance(self, eid: int, now: float) -> None:
        assert self.cursor is not None
        self._gaps.pop(eid, None)
        if eid <= self.cursor:
            return
        if eid - self.cursor <= 1000:
            for missing in range(self.cursor + 1, eid):
                self._gaps.setdefault(missing, now + self.settings.gap_wait)
        self.cursor = eid

    async def _hooks(self, conn: AsyncConnection) -> list[HookSpec]:
        rows = await conn.execute(
            select(
                m.Hook.id,
                m.Hook.name,
                m.Hook.kind,
                m.Hook.command,
                m.Hook.events,
                m.Hook.filters,
                m.Hook.timeout_s,
            ).where(m.Hook.enabled.is_(True))
        )
        return [
            HookSpec(
                hid,
                name,
                kind,
                command,
                frozenset(events or ()),
                {str(k): tuple(str(x) for x in v) for k, v in (filters or {}).items()},
                float(timeout),
            )
            for hid, name, kind, command, events, filters, timeout in rows
        ]

    async def _context(
        self, conn: AsyncConnection, rows: Iterable[EventRow]
    ) -> tuple[dict[str, TargetInfo], dict[str, str | None]]:
        targets = {
            tid: TargetInfo(tid, name, kind)
            for tid, name, kind in await conn.execute(
                select(m.Target.id, m.Target.name, m.Target.kind)
            )
        }
        rids = sorted({r.resource_id for r in rows if r.resource_id.startswith("i-")})
        on_target: dict[str, str | None] = {}
        for start in range(0, len(rids), 500):
            chunk = rids[start : start + 500]
            stmt = select(m.Instance.id, m.Instance.target_id).where(m.Instance.id.in_(chunk))
            on_target.update({rid: tid for rid, tid in await conn.execute(stmt)})
        return targets, on_target

    async def _start(self, hook: HookSpec, event: HookEvent) -> None:
        await self._slots.acquire()  # all busy: stop reading until one ends
        task = asyncio.create_task(self._run(hook, event), name=f"hook {hook.name}")
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _run(self, hook: HookSpec, event: HookEvent) -> None:
        started, clock = m.utcnow(), time.monotonic()
        body = json.dumps({**event.payload(), "hook": hook.name}).encode()
        try:
            if hook.kind == "script":
                outcome = await self._script(hook, event, body)
            else:
                outcome = await self._webhook(hook, event, body)
        except Exception as exc:  # a hook's failure is its run's, never the broker's
            outcome = Outcome("failed", None, f"{type(exc).__name__}: {exc}")
        if outcome.status != "ok":
            log.warning("hook %s on %s: %s", hook.name, event.name, outcome.status)
        row = {
            "hook_id": hook.id,
            "event_id": event.row.id,
            "started_at": started,
            "duration_ms": int((time.monotonic() - clock) * 1000),
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "output": outcome.output,
        }
        try:
            await self._runs.submit(row)
        except Exception:  # the batch failed: record this one alone
            await self._write_one(row)

    async def _write_runs(self, rows: list[dict[str, Any]]) -> None:
        async with self.rt.engine.begin() as conn:
            await conn.execute(insert(m.HookRun), rows)

    async def _write_one(self, row: dict[str, Any]) -> None:
        try:
            async with self.rt.engine.begin() as conn:
                await conn.execute(insert(m.HookRun).values(**row))
        except IntegrityError:
            log.info("hook %s was removed while it ran; its run is not kept", row["hook_id"])
        except Exception:
            log.exception("recording a run of hook %s failed", row["hook_id"])

    async def _script(self, hook: HookSpec, event: HookEvent, body: bytes) -> Outcome:
        limit = self.settings.output_limit
        try:
            proc = await asyncio.create_subprocess_exec(
                hook.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**_base_environment(), **event.environment(hook.name)},
                cwd=str(self.rt.config.data_path),
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome("failed", None, f"cannot start {hook.command}: {exc.strerror or exc}")
        kept = bytearray()
        try:
            async with asyncio.timeout(hook.timeout_s):
                await _feed(proc, body)
                await _collect(proc.stdout, kept, limit)
                code = await proc.wait()
        except TimeoutError:
            _kill_session(proc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await _collect(proc.stdout, kept, limit)
                    await proc.wait()
            note = f"\n[killed after {hook.timeout_s:g} s]"
            return Outcome("timeout", proc.returncode, _text(kept, limit) + note)
        finally:
            if proc.returncode is None:
                _kill_session(proc)
        return Outcome("ok" if code == 0 else "failed", code, _text(kept, limit))

    async def _webhook(self, hook: HookSpec, event: HookEvent, body: bytes) -> Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "cloudbroker-hooks"})
        limit = self.settings.output_limit
        headers = {
            "Content-Type": "application/json",
            "X-Cloudbroker-Event": event.name,
            "X-Cloudbroker-Event-Id": str(event.row.id),
            "X-Cloudbroker-Hook": hook.name,
        }
        kept = bytearray()
        try:
            async with asyncio.timeout(hook.timeout_s):
                async with self._session.post(
                    hook.command,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout_s),
                ) as resp:
                    while len(kept) < limit and (chunk := await resp.content.read(limit)):
                        kept += chunk
                    status = resp.status
        except TimeoutError:
            return Outcome("timeout", None, f"no answer within {hook.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return Outcome("failed", None, f"{type(exc).__name__}: {exc}"[:limit])
        return Outcome("ok" if 200 <= status < 300 else "failed", status, _text(kept, limit))


async def _feed(proc: asyncio.subprocess.Process, body: bytes) -> None:
    """Give the script the event on stdin; a script that does not read it is fine."""
    stdin = proc.stdin
    if stdin is None:
        return
    # A script that exits without reading closes its end: the write then fails with a broken
    # pipe, or, on uvloop, finds the transport already closed (it refuses writes to those).
    if not stdin.is_closing():
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(body)
            await stdin.drain()
    stdin.close()


async def run_hooks(rt: Runtime, settings: HookSettings | None = None) -> None:
    """The hook runner of a running broker: from the newest event on, until cancelled."""
    runner = HookRunner(rt, settings)
    await runner.start()
    await runner.run()
