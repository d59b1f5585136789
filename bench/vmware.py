"""The VMware backend's overhead: 200 launches through the broker against the same pyvmomi calls
made directly, and the cost of one monitoring cycle over 1,000 VMs, on govmomi's simulator.

The baseline script does per launch what the backend does (build and upload the config drive,
clone the template with the same device changes, power on, wait for each task), one launch after
another. The broker's run is the real path: service launch, scheduler placement and dispatch
(launches in flight per target as configured), the backend. The broker's added time per launch
is (broker wall time - baseline wall time) / launches; concurrency can make it negative.

``python -m bench.vmware`` prints its figures as one JSON object on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from backends.libvirt.configdrive import build_config_drive
from backends.vmware import devices as dev
from backends.vmware import vcsim
from backends.vmware.backend import VmwareBackend
from backends.vmware.inventory import resolve
from backends.vmware.session import Endpoint, Session
from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.config import from_mapping
from broker.plugins import BackendRegistry
from broker.protocols import LaunchSpec, NicSpec, TargetConfig
from broker.scheduler import Scheduler
from broker.service import images, instances, targets, users
from broker.service.instances import LaunchRequest
from broker.states import State
from policies.placement import DefaultPolicy

LAUNCHES = int(os.environ.get("BENCH_LAUNCHES", "200"))
OBSERVED_VMS = int(os.environ.get("BENCH_VMS", "1000"))
CYCLES = 5
TEMPLATE = "DC0_C0_RP0_VM0"
SETTINGS = {"insecure": True, "cluster": "DC0_C0", "cpu_ratio": 200, "memory_ratio": 40}


def spec_for(iid: str) -> LaunchSpec:
    return LaunchSpec(
        instance_id=iid,
        target_id="t",
        target_settings={},
        hostname=iid,
        vcpus=2,
        memory_mb=1024,
        disk_gb=0,
        flavor="t3.micro",
        image_id="ami-bench",
        image_kind="disk",
        image_location=f"template:{TEMPLATE}",
        image_kernel="",
        image_ramdisk="",
        image_cmdline="",
        image_checksum="",
        image_mappings={},
        user_data=b"#cloud-config\n",
        key_name=None,
        public_key=None,
        nics=(NicSpec("02:00:0a:00:00:05", "10.0.0.5", "net", "", "10.0.0.0/24", "10.0.0.1", ""),),
    )


def direct(sim: vcsim.Simulator, n: int) -> float:
    """Wall seconds for ``n`` launches made with pyvmomi directly."""
    si = SmartConnect(
        host=sim.host, port=sim.port, user="u", pwd="p", disableSslCertValidation=True
    )
    content = si.RetrieveContent()
    where = resolve(content, SETTINGS)
    session = Session(Endpoint(sim.url, sim.host, sim.port, "u", "p", True, 60.0), pool_size=1)
    template = content.searchIndex.FindChild(where.vm_folder, TEMPLATE)
    ds = where.datastore_name
    content.fileManager.MakeDirectory(
        name=f"[{ds}] direct", datacenter=where.datacenter, createParentDirectories=True
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            iid = f"d-{i:05d}"
            spec = spec_for(iid)
            local = Path(tmp) / "c.iso"
            build_config_drive(
                local,
                instance_id=iid,
                hostname=iid,
                user_data=spec.user_data,
                public_keys=[],
                nics=spec.nics,
            )
            session.upload(where.datacenter_name, ds, f"direct/{iid}.iso", local.read_bytes())
            devices = template.config.hardware.device
            changes = dev.nics_and_cdrom(spec, where, {}, f"[{ds}] direct/{iid}.iso", devices)
            clone = vim.vm.CloneSpec(
                location=vim.vm.RelocateSpec(pool=where.pool, datastore=where.datastore),
                config=dev.config_spec(spec, changes),
                powerOn=False,
            )
            task = template.CloneVM_Task(folder=where.vm_folder, name=iid, spec=clone)
            WaitForTask(task)
            vm = task.info.result
            WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=2, memoryMB=1024)))
            WaitForTask(vm.PowerOnVM_Task())
    elapsed = time.perf_counter() - t0
    session.close()
    Disconnect(si)
    si._stub.DropConnections()
    return elapsed


async def through_broker(sim: vcsim.Simulator, n: int, tmp: Path) -> float:
    """Wall seconds from the service's launch call until ``n`` instances run."""
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none"},
            "database": {"url": f"sqlite+aiosqlite:///{tmp / 'broker.db'}"},
        },
        env={},
    )
    rt = await open_runtime(cfg)
    try:
        rt.backends = BackendRegistry(
            rt.engine,
            rt.box.open,
            str(rt.config.data_path),
            loader=lambda _d: VmwareBackend,  # type: ignore[arg-type,return-value]
        )
        await targets.add(
            rt,
            SYSTEM,
            name="vc",
            kind="host",
            driver="vmware",
            hypervisor="vmware",
            settings={**SETTINGS, "url": sim.url},
            secret={"user": "u", "password": "p"},
        )
        from broker.monitor import Monitor

        await Monitor(rt).cycle()
        ami = (
            await images.register(
                rt,
                SYSTEM,
                images.ImageSpec(
                    name="tpl",
                    kind="disk",
                    location=f"template:{TEMPLATE}",
                    hypervisor="vmware",
                    visibility="public",
                ),
            )
        ).id
        creds = await users.create_user(rt, SYSTEM, "bench", role="admin")
        caller = Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)
        sched = Scheduler(rt, DefaultPolicy())
        t0 = time.perf_counter()
        got = await instances.launch(rt, caller, LaunchRequest(ami, "t3.micro", n, n))
        for _ in range(20):
            await sched.cycle()
            await sched.drain()
            page = await instances.describe(rt, caller, limit=1000)
            if all(i.state is State.RUNNING for i in page.items) and len(page.items) >= n:
                break
        elapsed = time.perf_counter() - t0
        states = {i.state for i in (await instances.describe(rt, caller)).items}
        if states != {State.RUNNING} or len(got) != n:
            raise SystemExit(f"broker launches did not all run: {states}")
        return elapsed
    finally:
        await rt.aclose()


async def observation(n: int) -> dict[str, float]:
    """Per-cycle cost (probe + observe, as the monitor calls them) with ``n`` VMs."""
    with vcsim.start("esx", vms=n) as sim:
        cfg = TargetConfig(
            "t",
            "t",
            "host",
            "vmware",
            "vmware",
            {"url": sim.url, "insecure": True},
            {"user": "u", "password": "p"},
            "/tmp",
        )
        backend = VmwareBackend(cfg)
        try:
            await backend.probe()
            names = [f"ha-host_VM{i}" for i in range(n)]
            times, calls = [], []
            for _ in range(CYCLES):
                t0 = time.perf_counter()
                await backend.probe()
                seen = await backend.observe(names)
                times.append(time.perf_counter() - t0)
                calls.append(1)
            assert len(seen) == n, len(seen)
        finally:
            await backend.aclose()
    return {"ms": statistics.median(times) * 1000, "vms": float(len(seen))}


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-vmware-") as tmp:
        with vcsim.start("vpx") as sim:
            base = direct(sim, LAUNCHES)
            broker = await through_broker(sim, LAUNCHES, Path(tmp))
        obs = await observation(OBSERVED_VMS)
    return {
        "bench": "vmware",
        "launches": LAUNCHES,
        "direct_s": round(base, 3),
        "broker_s": round(broker, 3),
        "direct_ms_per_launch": round(base / LAUNCHES * 1000, 2),
        "broker_ms_per_launch": round(broker / LAUNCHES * 1000, 2),
        "broker_added_ms_per_launch": round((broker - base) / LAUNCHES * 1000, 2),
        "ratio": round(broker / base, 3),
        "observe_vms": int(obs["vms"]),
        "observe_ms_per_cycle": round(obs["ms"], 1),
        "observe_calls_per_cycle": 1,
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    sys.stdout.write(json.dumps(result) + "\n")
