"""An OVF package (a tiny descriptor and a streamOptimized VMDK made by ``qemu-img``) imported
into govmomi's simulator through the admin API and through ``cloudbroker image import-ovf``:
vSphere's own CreateImportSpec, ImportVApp and HTTP NFC lease upload, then MarkAsTemplate;
the image then launches an instance by cloning that template.

The simulator (govmomi 0.24) accepts the disk's bytes on the lease URL and discards them (its
log says how many it received, which the test checks); the template's disk is the simulator's
own empty file. What is proven is the protocol, not the disk's content."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from pyVmomi import vim

from backends.libvirt.local import simulated_node_file
from backends.vmware.vcsim import Simulator
from broker.auth import SYSTEM
from broker.client import AdminClient
from broker.runtime import Runtime
from broker.service import instances, targets, users
from broker.service.instances import LaunchRequest
from broker.states import State
from tests.backends.vmware.test_backend import Disconnect, direct, find_vm, secret, settle, world
from tests.broker.test_serve import Server, cli, cli_json, wait_state
from tests.conftest import make_user
from tests.frontends.admin.conftest import admin_api, call

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="{href}" ovf:id="file1" ovf:size="{size}"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
      ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="tiny"><Info>A tiny VM</Info><Name>tiny</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>OS</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection><Info>Hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType>
      </System>
      <Item><rasd:ElementName>1 CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>256 MB</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """``tiny.ovf`` and its streamOptimized ``tiny-disk1.vmdk`` (16 MiB of zeros) in a folder."""
    assert shutil.which("qemu-img"), "qemu-img (Debian's qemu-utils) is needed"
    folder = tmp_path / "package"
    folder.mkdir()
    raw, vmdk = folder / "disk.raw", folder / "tiny-disk1.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw),
         str(vmdk)],
        check=True,
    )  # fmt: skip
    raw.unlink()
    (folder / "tiny.ovf").write_text(OVF.format(href=vmdk.name, size=vmdk.stat().st_size))
    return folder / "tiny.ovf"


def template_on(sim: Simulator, name: str) -> tuple[bool, list[str]]:
    """Whether the VM ``name`` is a template, and its disks' files, read directly."""
    si = direct(sim)
    try:
        vm = find_vm(si, name)
        assert vm is not None, f"no VM {name} on the simulator"
        disks = [
            d.backing.fileName
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk)
        ]
        return bool(vm.config.template), disks
    finally:
        Disconnect(si)


async def test_an_ovf_package_becomes_a_template_and_launches(
    vrt: Runtime, sim: Simulator, package: Path, tmp_path: Path
) -> None:
    rt = vrt
    await world(rt, sim)
    vmdk = package.with_name("tiny-disk1.vmdk")
    async with admin_api(rt) as api:
        status, made = await call(
            api,
            "POST",
            "/api/v1/images/import-ovf",
            json={
                "name": "tiny-ovf",
                "target": f"vs-{sim.mode}",
                "descriptor": package.read_text(),
                "visibility": "public",
            },
        )
        assert status == 201, made
        image = made["image"]["id"]
        assert made["image"]["state"] == "pending" and made["target"] == f"vs-{sim.mode}"
        assert made["files"] == [{"href": vmdk.name, "size": vmdk.stat().st_size}]
        status, early = await call(api, "POST", f"/api/v1/images/{image}/ovf/import")
        assert status == 409 and "still waits for tiny-disk1.vmdk" in early["error"]["message"]
        status, got = await call(
            api, "PUT", f"/api/v1/images/{image}/ovf/{vmdk.name}", data=vmdk.read_bytes()
        )
        assert (status, got) == (200, {"href": vmdk.name, "size": vmdk.stat().st_size})
        status, done = await call(api, "POST", f"/api/v1/images/{image}/ovf/import")
        assert status == 200, done
        assert done["state"] == "available"
        assert done["location"] == f"template:cloudbroker-{image}"
        assert done["hypervisor"] == "vmware"
    is_template, disks = template_on(sim, f"cloudbroker-{image}")
    assert is_template and disks and disks[0].endswith(f"cloudbroker-{image}/disk-0.vmdk")
    log = (tmp_path / f"vcsim-{sim.mode}.log").read_text()
    assert f"transferred {vmdk.stat().st_size} bytes" in log  # the lease took the disk's bytes
    assert not (rt.config.data_path / "ovf" / image).exists()  # staging removed

    alice = await make_user(rt, "alice")
    (inst,) = await instances.launch(rt, alice, LaunchRequest(image, "t3.micro"))
    await settle(rt)
    view = await instances.get(rt, alice, inst.id)
    assert view.state is State.RUNNING, view.state_reason
    si = direct(sim)
    try:
        vm = find_vm(si, inst.id)
        assert vm is not None and not vm.config.template
    finally:
        Disconnect(si)


async def test_bad_packages_and_callers_are_refused(vrt: Runtime, esx: Simulator) -> None:
    rt = vrt
    await world(rt, esx)
    await users.create_user(rt, SYSTEM, "alice")
    alice = await users.issue_token(rt, SYSTEM, "alice")
    good = OVF.format(href="d.vmdk", size=4)
    async with admin_api(rt) as api:

        async def begin(descriptor: str, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
            payload = {"name": "x", "target": "vs-esx", "descriptor": descriptor}
            return await call(api, "POST", "/api/v1/images/import-ovf", token, json=payload)

        for descriptor, says in (
            (OVF.format(href="../etc/passwd", size=4), "only plain file names"),
            (OVF.format(href="sub/d.vmdk", size=4), "only plain file names"),
            ("<not-xml", "not XML"),
            ("<Envelope/>", "not an OVF 1.x Envelope"),
            (OVF.format(href="d.vmdk", size="-1"), "bad size"),
        ):
            status, answer = await begin(descriptor)
            assert status == 400 and says in answer["error"]["message"], answer
        status, answer = await begin(good, alice)
        assert status == 403 and answer["error"]["code"] == "Forbidden"
        status, made = await begin(good)
        assert status == 201
        image = made["image"]["id"]
        status, answer = await call(
            api, "PUT", f"/api/v1/images/{image}/ovf/d.vmdk", data=b"too long"
        )
        assert status == 400 and "larger than the 4 bytes" in answer["error"]["message"]
        status, answer = await call(api, "PUT", f"/api/v1/images/{image}/ovf/other.vmdk", data=b"x")
        assert status == 404 and "references no file 'other.vmdk'" in answer["error"]["message"]
        # a descriptor vSphere itself refuses (an unknown SCSI controller): a 400 with
        # vSphere's reason, the image failed, nothing left in the inventory or the staging
        refused = good.replace(">lsilogic<", ">warp-drive<")
        status, made = await begin(refused)
        assert status == 201
        image = made["image"]["id"]
        status, _ = await call(api, "PUT", f"/api/v1/images/{image}/ovf/d.vmdk", data=b"1234")
        assert status == 200
        status, answer = await call(api, "POST", f"/api/v1/images/{image}/ovf/import")
        assert status == 400, answer
        assert answer["error"]["message"].startswith("vSphere cannot import this OVF")
        status, shown = await call(api, "GET", f"/api/v1/images/{image}")
        assert shown["state"] == "failed"
        status, again = await call(api, "POST", f"/api/v1/images/{image}/ovf/import")
        assert status == 409 and again["error"]["code"] == "InvalidState"
    assert not (rt.config.data_path / "ovf" / image).exists()
    si = direct(esx)
    try:
        assert find_vm(si, f"cloudbroker-{image}") is None
    finally:
        Disconnect(si)


async def test_a_target_that_cannot_import_answers_501(sqlite_rt: Runtime) -> None:
    node = simulated_node_file(sqlite_rt.config.data_path)
    await targets.add(
        sqlite_rt,
        SYSTEM,
        name="kvm-1",
        kind="host",
        driver="libvirt",
        hypervisor="kvm",
        settings={"uri": f"test://{node}"},
        simulated=True,
    )
    async with admin_api(sqlite_rt) as api:
        status, answer = await call(
            api,
            "POST",
            "/api/v1/images/import-ovf",
            json={"name": "x", "target": "kvm-1", "descriptor": OVF.format(href="d.vmdk", size=4)},
        )
    assert status == 501
    assert answer["error"] == {
        "code": "Unsupported",
        "message": "the libvirt driver of 'kvm-1' cannot import OVF packages",
    }


def test_the_cli_imports_and_the_image_launches(
    server: Server, esx: Simulator, package: Path
) -> None:
    cfg = server.cfg
    cli(cfg, "host", "disable", "local-simulated")
    cli(
        cfg,
        "host", "add", "vs", "--hypervisor", "vmware", "--vsphere", esx.url, "--insecure",
        "--user", secret(esx)["user"], "--password", secret(esx)["password"],
    )  # fmt: skip
    image = cli_json(cfg, "image", "import-ovf", "tiny", str(package), "--target", "vs")
    assert isinstance(image, dict)
    assert (image["name"], image["state"]) == ("tiny", "available")
    assert template_on(esx, image["location"].removeprefix("template:"))[0]
    saved = json.loads((cfg.parent / "data" / "operator.json").read_text())
    client = AdminClient(saved["url"], saved["token"])
    (inst,) = client.call("POST", "/api/v1/instances", {"image": image["id"], "flavor": "t3.micro"})
    wait_state(cfg, inst["id"], "running")
    wrong = cli(cfg, "image", "import-ovf", "x", str(package), "--target", "nowhere", check=False)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: ")
    assert wrong.stderr.count("\n") == 1
    cli(cfg, "instance", "terminate", inst["id"])
    wait_state(cfg, inst["id"], "done")
