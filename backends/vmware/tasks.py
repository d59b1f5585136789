"""Watching vSphere tasks to completion, and power-state changes as vSphere announces them.

Decisions:

* A task is watched by reading its ``info`` with a short, growing pause (2 ms doubling to
  100 ms): simulator and vCenter tasks mostly finish within milliseconds, and a poll costs one
  round trip where a property filter costs three. Past its timeout the task is cancelled when
  vSphere allows and ``BackendTimeout`` raised. A failed task raises its fault, which
  :mod:`backends.vmware.faults` translates.
* :class:`PowerWatch` keeps one property filter over every VM in the folder (the same
  container view the monitor reads) on a property collector of its own and long-polls
  ``WaitForUpdatesEx`` in one thread of its own, so waiting for a guest to power itself off
  costs no polling and is noticed within the update's own latency. It only ever tells
  waiters "look again"; the monitor's per-cycle read stays the authority.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from backends.vmware.faults import translate
from backends.vmware.sdk import vim, vmodl
from backends.vmware.session import Session
from broker.errors import BackendError, BackendTimeout

PC = vmodl.query.PropertyCollector
FIRST_PAUSE, MAX_PAUSE = 0.002, 0.1
WAIT_SECONDS = 5
TASK_PROPS = ("info.state", "info.error", "info.result", "info.cancelable")


def wait_task(session: Session, task: Any, timeout: float, what: str) -> Any:
    """The task's result once it succeeds; its fault (translated) when it fails.

    Only ``info.state``, ``info.error`` and ``info.result`` are read: the rest of ``info`` is
    more to parse, and some servers fill it with values pyVmomi refuses.
    """
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=task)],
        propSet=[PC.PropertySpec(type=vim.Task, pathSet=list(TASK_PROPS))],
    )
    while True:
        found = session.retrieve([spec])
        info = found[0][1] if found else {}
        state = info.get("info.state")
        if state == vim.TaskInfo.State.success:
            return info.get("info.result")
        if state == vim.TaskInfo.State.error:
            fault = info.get("info.error")
            if isinstance(fault, BaseException):
                raise translate(fault, what) from fault
            raise BackendError(f"{what}: the vSphere task failed")
        if time.monotonic() >= deadline:
            if info.get("info.cancelable"):
                with contextlib.suppress(Exception):
                    task.CancelTask()
            raise BackendTimeout(f"{what}: the vSphere task did not finish in {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)


class PowerWatch:
    """VM moref -> power state, kept current by WaitForUpdatesEx; waiters are woken on change."""

    def __init__(self, session: Session, view_of: Callable[[], Any]) -> None:
        self._session = session
        self._view_of = view_of
        self._cond = threading.Condition()
        self._power: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pc: Any = None
        self.updates = 0

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="vmware-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        pc = self._pc
        if pc is not None:
            with contextlib.suppress(Exception):
                pc.CancelWaitForUpdates()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_SECONDS + 1)

    def power(self, moref: str) -> str | None:
        with self._cond:
            return self._power.get(moref)

    def wait_for(self, moref: str, states: set[str], timeout: float) -> str | None:
        """The VM's power state once it is one of ``states``; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = self._power.get(moref)
                if now in states:
                    return now
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception:  # a dropped session or connection: start over after a pause
                self._pc = None
                self._stop.wait(1.0)

    def _watch(self) -> None:
        content = self._session.content
        pc = content.propertyCollector.CreatePropertyCollector()
        self._pc = pc
        try:
            spec = PC.FilterSpec(
                objectSet=[
                    PC.ObjectSpec(
                        obj=self._view_of(),
                        skip=True,
                        selectSet=[
                            PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")
                        ],
                    )
                ],
                propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.powerState"])],
            )
            pc.CreateFilter(spec, partialUpdates=False)
            version = ""
            options = PC.WaitOptions(maxWaitSeconds=WAIT_SECONDS)
            while not self._stop.is_set():
                result = pc.WaitForUpdatesEx(version, options)
                if result is None:
                    continue
                version = result.version
                self._apply(result)
        finally:
            self._pc = None
            with contextlib.suppress(Exception):
                pc.DestroyPropertyCollector()

    def _apply(self, result: Any) -> None:
        with self._cond:
            for fs in result.filterSet or ():
                for oc in fs.objectSet or ():
                    key = oc.obj._moId
                    if oc.kind == "leave":
                        self._power.pop(key, None)
                        continue
                    for change in oc.changeSet or ():
                        if change.name == "runtime.powerState":
                            self._power[key] = str(change.val)
            self.updates += 1
            self._cond.notify_all()
