"""backends.libvirt.remote against a real lab host's sshd: copies (fresh, resumed, refused on a
bad checksum), commands with hostile arguments, the one-command probe, and reconnecting.

One lab host (its own network namespace and sshd, logged in to as the lab user); the files land
in the host's own image store (``labcli.host_store``), which only the SSH side writes to.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backends.libvirt.backend import LibvirtBackend
from backends.libvirt.lab import LabState, lab_down, lab_up
from backends.libvirt.labcli import host_store
from backends.libvirt.remote import HostShell, SshTarget, parse_probe
from broker.errors import BackendError, BackendUnavailable
from broker.protocols import LaunchSpec, TargetConfig
from broker.states import Action, State

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]
SUBNET = os.environ.get("CLOUDBROKER_TEST_REMOTE_SUBNET", "10.77.212.0/24")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabState, Path]]:
    work = tmp_path_factory.mktemp("remote-lab")
    try:
        state = lab_up(work, 1, subnet=SUBNET)
        yield state, host_store(state, state.hosts[0])
    finally:
        lab_down(work)


@pytest.fixture
async def shell(lab: tuple[LabState, Path]) -> AsyncIterator[HostShell]:
    state, _store = lab
    host = state.hosts[0]
    target = SshTarget.from_settings(
        {
            "ssh": f"{host.user}@{host.address}:{host.ssh_port}",
            "ssh_key": host.key_path,
            "known_hosts": state.known_hosts,
        }
    )
    assert target is not None
    sh = HostShell(target, name=host.name)
    try:
        yield sh
    finally:
        await sh.aclose()


def blob(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_ssh_settings_are_parsed() -> None:
    t = SshTarget.from_settings({"ssh": "cblab@10.0.0.5:2222", "ssh_key": "/k"})
    assert t == SshTarget("10.0.0.5", 2222, "cblab", "/k", None)
    assert SshTarget.from_settings({"ssh": "[fd00::1]:22"}) == SshTarget("fd00::1", 22)
    assert SshTarget.from_settings({"ssh": "host"}) == SshTarget("host", 22)
    assert SshTarget.from_settings({}) is None
    load = parse_probe(
        "load 0.42\nMemAvailable:   2048000 kB\n/dev/vda 263174212 31457280 76800000 29% /\n"
    )
    assert (load.load, load.free_memory_mb) == (0.42, 2000)
    assert round(load.free_disk_gb, 1) == 73.2


async def test_put_copies_and_the_host_computes_the_same_sha256(
    shell: HostShell, lab: tuple[LabState, Path], tmp_path: Path
) -> None:
    _state, store = lab
    digest = blob(tmp_path / "img", 3 * 2**20 + 17)
    remote = str(store / "put" / "img.raw")
    await shell.mkdir(str(store / "put"))
    assert await shell.put(tmp_path / "img", remote) == 3 * 2**20 + 17
    assert await shell.sha256(remote) == digest
    assert await shell.size(remote) == 3 * 2**20 + 17
    assert (await shell.put(tmp_path / "img", remote)) == 0  # complete: nothing to send
    assert await shell.put_verified(tmp_path / "img", str(store / "put" / "final"), digest)
    assert not await shell.put_verified(tmp_path / "img", str(store / "put" / "final"), digest)
    await shell.remove([str(store / "put")])
    assert not await shell.exists(remote)


async def test_a_partial_copy_continues_from_its_size(
    shell: HostShell, lab: tuple[LabState, Path], tmp_path: Path
) -> None:
    _state, store = lab
    size = 2 * 2**20 + 5
    digest = blob(tmp_path / "img", size)
    (tmp_path / "head").write_bytes((tmp_path / "img").read_bytes()[: 700 * 1024])
    final = str(store / "resume" / "img.qcow2")
    await shell.mkdir(str(store / "resume"))
    await shell.put(tmp_path / "head", final + ".part", resume=False)  # an interrupted copy
    assert await shell.size(final + ".part") == 700 * 1024
    assert await shell.put(tmp_path / "img", final + ".part") == size - 700 * 1024
    assert await shell.sha256(final + ".part") == digest
    # put_verified on a partial copy: continues it, checks it, renames it into place
    await shell.remove([final + ".part"])
    await shell.put(tmp_path / "head", final + ".part", resume=False)
    assert await shell.put_verified(tmp_path / "img", final, digest)
    assert await shell.sha256(final) == digest
    assert not await shell.exists(final + ".part")
    await shell.remove([str(store / "resume")])


async def test_a_checksum_mismatch_is_refused_and_the_copy_removed(
    shell: HostShell, lab: tuple[LabState, Path], tmp_path: Path
) -> None:
    _state, store = lab
    blob(tmp_path / "img", 300 * 1024)
    final = str(store / "bad" / "img.raw")
    with pytest.raises(BackendError, match="expected 0000") as info:
        await shell.put_verified(tmp_path / "img", final, "0" * 64)
    assert "removed" in str(info.value)
    assert not await shell.exists(final + ".part")
    assert not await shell.exists(final)
    await shell.remove([str(store / "bad")])


async def test_hostile_arguments_stay_arguments(
    shell: HostShell, lab: tuple[LabState, Path], tmp_path: Path
) -> None:
    _state, store = lab
    canary = tmp_path / "pwned"
    hostile = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", "a b", "'q\"", ""]
    out = await shell.run("printf", r"%s\n", *hostile)
    assert out.split("\n")[:-1] == hostile
    assert not canary.exists()
    odd = store / "odd dir; rm -rf ~" / "it's $(id).raw"
    blob(tmp_path / "img", 1000)
    await shell.mkdir(str(odd.parent))
    await shell.put(tmp_path / "img", str(odd))
    assert await shell.exists(str(odd))
    await shell.remove([str(odd.parent)])
    assert not await shell.exists(str(odd))
    with pytest.raises(BackendError, match="false"):
        await shell.run("false")


async def test_probe_and_reconnect(shell: HostShell, lab: tuple[LabState, Path]) -> None:
    state, store = lab
    seen = await shell.probe(str(store / "not-yet" / "made"))
    assert seen.load >= 0 and seen.free_memory_mb > 0 and seen.free_disk_gb > 0
    assert shell._conn is not None
    shell._conn.close()  # the connection drops: the next call opens another
    await shell._conn.wait_closed()
    assert (await shell.run("echo", "again")).strip() == "again"
    host = state.hosts[0]
    closed = SshTarget(host.address, 1, host.user, host.key_path, state.known_hosts)
    gone = HostShell(closed)
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        await gone.run("true")
    await gone.aclose()


def disk_spec(image: Path, checksum: str, rid: str) -> LaunchSpec:
    return LaunchSpec(
        instance_id=rid, target_id="t-1", target_settings={}, hostname=rid, vcpus=1,
        memory_mb=64, disk_gb=0, flavor="tiny", image_id="ami-0123456789abcdef0",
        image_kind="disk", image_location=str(image), image_kernel="", image_ramdisk="",
        image_cmdline="", image_checksum=checksum, image_mappings={}, user_data=None,
        key_name=None, public_key=None, nics=(),
    )  # fmt: skip


async def test_a_disk_image_launch_on_a_host_with_its_own_store(
    shell: HostShell, lab: tuple[LabState, Path], tmp_path: Path
) -> None:
    """The backend with store ssh: a wrong checksum fails the launch and leaves nothing; the
    right one (as images.register stores it, "sha256:HEX") boots from a qcow2 overlay made on
    the host; terminate removes the instance's files and keeps the image for the next launch."""
    state, store = lab
    host = state.hosts[0]
    image = tmp_path / "blank.raw"
    digest = blob(image, 2**20)
    image_dir = store / "backend"
    config = TargetConfig(
        id="t-1", name=host.name, kind="host", driver="libvirt", hypervisor="kvm",
        settings={
            "uri": host.local_uri,  # libvirt calls locally; every file operation over ssh
            "ssh": f"{host.user}@{host.address}:{host.ssh_port}", "ssh_key": host.key_path,
            "known_hosts": state.known_hosts, "virt_type": "qemu", "store": "ssh",
            "image_dir": str(image_dir),
        },
        secret={}, data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    backend = LibvirtBackend(config)
    base = str(image_dir / "images" / "ami-0123456789abcdef0.raw")
    try:
        with pytest.raises(BackendError, match=f"expected {'ab' * 32}"):
            await backend.launch(disk_spec(image, "sha256:" + "ab" * 32, "i-0000000000000bad"))
        assert not await shell.exists(str(image_dir / "instances" / "i-0000000000000bad"))
        assert not await shell.exists(base) and not await shell.exists(base + ".part")
        assert await backend.observe(["i-0000000000000bad"]) == []

        rid = "i-00000000000000ok"
        placed = await backend.launch(disk_spec(image, "sha256:" + digest.upper(), rid))
        assert placed.state is State.RUNNING
        overlay = str(image_dir / "instances" / rid / "disk.qcow2")
        info = json.loads(await shell.run("qemu-img", "info", "-U", "--output=json", overlay))
        assert (info["format"], info["backing-filename"]) == ("qcow2", base)
        assert info["backing-filename-format"] == "raw"
        assert await shell.sha256(base) == digest
        assert isinstance(await backend.console(rid), str)
        assert await backend.act(rid, Action.TERMINATE) is None
        assert not await shell.exists(str(image_dir / "instances" / rid))
        assert await shell.exists(base)  # kept for the next launch
    finally:
        await backend.aclose()
