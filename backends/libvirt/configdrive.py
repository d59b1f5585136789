"""The config drive: a small ISO that cloud-init (NoCloud) reads at boot to configure a guest.

Decisions:

* Layout is cloud-init's NoCloud: volume label ``cidata``; files ``meta-data``, ``user-data``
  and ``network-config`` at the root. ISO 9660 itself cannot spell those names, so the ISO
  names are 8.3 (``META_DAT.``) and Rock Ridge and Joliet carry the real lower-case ones, as
  ``genisoimage -J -r`` would.
* ``meta-data`` and ``network-config`` are written as JSON, which every YAML loader reads, so
  no YAML library is needed and no user string can break out of its value.
* ``meta-data`` has ``instance-id``, ``local-hostname`` and ``public-keys``. A public key
  must be one line (cloud-init writes each to a line of ``authorized_keys``).
* ``user-data`` is the EC2 UserData bytes verbatim, at most 16 KiB as on EC2. Without user data
  the file is empty: cloud-init treats an empty user-data as "nothing to do", and an instance
  launched with an explicit ``#cloud-config`` stays distinguishable from one launched with none.
* ``network-config`` is version 1 (the format every cloud-init renderer understands): one
  ``physical`` entry per NIC, matched by MAC and named ``eth0``, ``eth1``... in NIC order, with
  a static address, gateway and DNS servers when the NIC has an address, else DHCP.
* The ISO is written to a temporary file beside ``path`` and renamed over it, so a guest never
  sees half a drive. It is created mode 0600 (it can hold secrets in user data).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import pycdlib

from broker.errors import InvalidRequest
from broker.protocols import NicSpec

LABEL = "cidata"
MAX_USER_DATA = 16 * 1024

#: NoCloud name -> the 8.3 ISO 9660 name that carries it.
_FILES: dict[str, str] = {
    "meta-data": "/META_DAT.;1",
    "user-data": "/USER_DAT.;1",
    "network-config": "/NETWORK_.;1",
}


def build_config_drive(
    path: str | os.PathLike[str],
    *,
    instance_id: str,
    hostname: str,
    user_data: bytes | None,
    public_keys: Sequence[str],
    nics: Sequence[NicSpec],
    mode: int = 0o600,
) -> None:
    """Write the NoCloud ISO for one instance to ``path`` (atomically)."""
    if user_data is not None and len(user_data) > MAX_USER_DATA:
        raise InvalidRequest(
            f"user data is {len(user_data)} bytes; the limit is {MAX_USER_DATA}",
            field="UserData",
        )
    files = {
        "meta-data": _json(meta_data(instance_id, hostname, public_keys)),
        "user-data": user_data or b"",
        "network-config": _json(network_config(nics)),
    }
    _write_iso(os.fspath(path), files, mode)


def meta_data(instance_id: str, hostname: str, public_keys: Sequence[str]) -> dict[str, Any]:
    """The ``meta-data`` document; a key with a line break inside is refused, not split."""
    keys = [key.strip() for key in public_keys if key.strip()]
    for key in keys:
        if any(ch in key for ch in "\r\n\x00"):
            raise InvalidRequest("a public key must be one line", field="PublicKeyMaterial")
    return {"instance-id": instance_id, "local-hostname": hostname, "public-keys": keys}


def network_config(nics: Sequence[NicSpec]) -> dict[str, Any]:
    """The ``network-config`` document (cloud-init networking config version 1)."""
    config: list[dict[str, Any]] = []
    for index, nic in enumerate(nics):
        config.append(
            {
                "type": "physical",
                "name": f"eth{index}",
                "mac_address": nic.mac.lower(),
                "subnets": [_subnet(nic)],
            }
        )
    return {"version": 1, "config": config}


def _subnet(nic: NicSpec) -> dict[str, Any]:
    if not nic.ip:
        return {"type": "dhcp"}
    try:
        network = ipaddress.ip_network(nic.cidr, strict=False)
        address = ipaddress.ip_address(nic.ip)
    except ValueError as exc:
        raise InvalidRequest(f"bad address {nic.ip!r} in {nic.cidr!r}", field="ip") from exc
    subnet: dict[str, Any] = {
        "type": "static6" if address.version == 6 else "static",
        "address": f"{address}/{network.prefixlen}",
    }
    if nic.gateway:
        subnet["gateway"] = nic.gateway
    servers = [s for s in nic.dns.replace(",", " ").split() if s]
    if servers:
        subnet["dns_nameservers"] = servers
    return subnet


def read_config_drive(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The files of a config drive by their Rock Ridge names (for tests and debugging)."""
    iso = pycdlib.PyCdlib()
    iso.open(os.fspath(path))
    try:
        out: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dir() or child.rock_ridge is None:
                continue
            name = child.rock_ridge.name().decode("utf-8")
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()


def read_label(path: str | os.PathLike[str]) -> str:
    """The volume label (primary descriptor) of an ISO."""
    iso = pycdlib.PyCdlib()
    iso.open(os.fspath(path))
    try:
        return bytes(iso.pvd.volume_identifier).decode("ascii").rstrip()
    finally:
        iso.close()


def _write_iso(path: str, files: dict[str, bytes], mode: int) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data), len(data), _FILES[name], rr_name=name, joliet_path=f"/{name}"
            )
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".configdrive-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                iso.write_fp(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    finally:
        iso.close()


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")
