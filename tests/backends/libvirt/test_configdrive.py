"""The config drive: NoCloud files and label, read back with pycdlib; limits; atomic writes."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pycdlib
import pytest

from backends.libvirt.configdrive import (
    LABEL,
    MAX_USER_DATA,
    build_config_drive,
    read_config_drive,
    read_label,
)
from broker.errors import InvalidRequest
from broker.protocols import NicSpec

NICS = (
    NicSpec(
        mac="52:54:00:AA:00:01",
        ip="10.20.0.5",
        network="net-1",
        bridge="br0",
        cidr="10.20.0.0/24",
        gateway="10.20.0.1",
        dns="10.20.0.2, 10.20.0.3",
    ),
    NicSpec(
        mac="52:54:00:aa:00:02",
        ip=None,
        network="net-2",
        bridge="br1",
        cidr="192.168.7.0/24",
        gateway="",
        dns="",
    ),
    NicSpec(
        mac="52:54:00:aa:00:03",
        ip="fd00::10",
        network="net-3",
        bridge="br2",
        cidr="fd00::/64",
        gateway="fd00::1",
        dns="fd00::53",
    ),
)
KEYS = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXk user@laptop", "  ", "ssh-rsa AAAAB3Nza k2\n")
USER_DATA = b"#!/bin/sh\necho 'hello <&>' \xff\xfe binary\n"


def build(path: Path, user_data: bytes | None = USER_DATA) -> dict[str, bytes]:
    build_config_drive(
        path,
        instance_id="i-0123456789abcdef0",
        hostname="web-1",
        user_data=user_data,
        public_keys=KEYS,
        nics=NICS,
    )
    return read_config_drive(path)


def test_files_and_label(tmp_path: Path) -> None:
    iso_path = tmp_path / "config.iso"
    files = build(iso_path)
    assert set(files) == {"meta-data", "user-data", "network-config"}
    assert files["user-data"] == USER_DATA
    assert json.loads(files["meta-data"]) == {
        "instance-id": "i-0123456789abcdef0",
        "local-hostname": "web-1",
        "public-keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXk user@laptop",
            "ssh-rsa AAAAB3Nza k2",
        ],
    }
    assert json.loads(files["network-config"]) == {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth0",
                "mac_address": "52:54:00:aa:00:01",
                "subnets": [
                    {
                        "type": "static",
                        "address": "10.20.0.5/24",
                        "gateway": "10.20.0.1",
                        "dns_nameservers": ["10.20.0.2", "10.20.0.3"],
                    }
                ],
            },
            {
                "type": "physical",
                "name": "eth1",
                "mac_address": "52:54:00:aa:00:02",
                "subnets": [{"type": "dhcp"}],
            },
            {
                "type": "physical",
                "name": "eth2",
                "mac_address": "52:54:00:aa:00:03",
                "subnets": [
                    {
                        "type": "static6",
                        "address": "fd00::10/64",
                        "gateway": "fd00::1",
                        "dns_nameservers": ["fd00::53"],
                    }
                ],
            },
        ],
    }
    assert read_label(iso_path) == LABEL == "cidata"
    assert stat.S_IMODE(iso_path.stat().st_mode) == 0o600


def test_names_are_lower_case_in_rock_ridge_and_joliet(tmp_path: Path) -> None:
    iso_path = tmp_path / "config.iso"
    build(iso_path)
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
        assert iso.pvd.volume_identifier.rstrip() == b"cidata"
        assert iso.joliet_vd is not None
        assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == "cidata"
        rr = sorted(
            c.rock_ridge.name()
            for c in iso.list_children(rr_path="/")
            if not c.is_dir() and c.rock_ridge is not None
        )
        assert rr == [b"meta-data", b"network-config", b"user-data"]
        joliet = sorted(
            c.file_identifier().decode("utf-16-be")
            for c in iso.list_children(joliet_path="/")
            if not c.is_dir()
        )
        assert joliet == ["meta-data", "network-config", "user-data"]
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/user-data")
        assert out.getvalue() == USER_DATA
    finally:
        iso.close()


def test_no_user_data_is_an_empty_file(tmp_path: Path) -> None:
    files = build(tmp_path / "config.iso", user_data=None)
    assert files["user-data"] == b""


def test_user_data_limit(tmp_path: Path) -> None:
    files = build(tmp_path / "max.iso", user_data=b"x" * MAX_USER_DATA)
    assert len(files["user-data"]) == MAX_USER_DATA == 16384
    target = tmp_path / "big.iso"
    with pytest.raises(InvalidRequest) as info:
        build(target, user_data=b"x" * (MAX_USER_DATA + 1))
    assert info.value.field == "UserData"
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["max.iso"]


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    iso_path = tmp_path / "config.iso"
    build(iso_path, user_data=b"#cloud-config\n")
    inode = iso_path.stat().st_ino
    files = build(iso_path, user_data=b"#cloud-config\nhostname: two\n")
    assert files["user-data"] == b"#cloud-config\nhostname: two\n"
    assert iso_path.stat().st_ino != inode  # a new file was renamed over the old one
    assert os.listdir(tmp_path) == ["config.iso"]  # no temporary file left behind


def test_failed_write_leaves_the_old_drive(tmp_path: Path) -> None:
    iso_path = tmp_path / "config.iso"
    build(iso_path, user_data=b"old")
    bad_nic = NicSpec("52:54:00:00:00:01", "10.0.0.300", "n", "br0", "10.0.0.0/24", "", "")
    with pytest.raises(InvalidRequest):
        build_config_drive(
            iso_path,
            instance_id="i-1",
            hostname="h",
            user_data=b"new",
            public_keys=(),
            nics=(bad_nic,),
        )
    assert read_config_drive(iso_path)["user-data"] == b"old"
    assert os.listdir(tmp_path) == ["config.iso"]


def test_hostile_strings_stay_inside_their_values(tmp_path: Path) -> None:
    iso_path = tmp_path / "config.iso"
    hostname = 'h"\n- evil: yes\n{}: ]ü'
    build_config_drive(
        iso_path,
        instance_id="i-1",
        hostname=hostname,
        user_data=None,
        public_keys=['ssh-ed25519 AAAA "quoted" ü'],
        nics=(),
    )
    files = read_config_drive(iso_path)
    meta = json.loads(files["meta-data"])
    assert meta["local-hostname"] == hostname
    assert meta["public-keys"] == ['ssh-ed25519 AAAA "quoted" ü']
    assert files["meta-data"].isascii()
    assert json.loads(files["network-config"]) == {"version": 1, "config": []}


def test_a_public_key_with_a_line_break_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_config_drive(
            tmp_path / "config.iso",
            instance_id="i-1",
            hostname="h",
            user_data=None,
            public_keys=["ssh-ed25519 AAAA\nssh-ed25519 BBBB evil"],
            nics=(),
        )
    assert info.value.field == "PublicKeyMaterial"
    assert os.listdir(tmp_path) == []
