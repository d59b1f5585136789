"""``cloudbroker host add --hypervisor vmware`` through a real ``serve``, against a vCenter
simulator: the issue's wording (``--cluster`` names the vCenter cluster, which is also our
cluster), ``--vs-cluster`` when the two differ, and wrong credentials in one line."""

from __future__ import annotations

from backends.vmware import vcsim
from tests.broker.test_serve import Server, cli, cli_json


def test_host_add_names_the_vcenter_cluster_with_cluster(
    server: Server, vpx_locked: vcsim.Simulator
) -> None:
    base = ["--hypervisor", "vmware", "--vsphere", vpx_locked.url, "--insecure"]
    creds = ["--user", "admin", "--password", "s3cret"]
    made = cli_json(server.cfg, "host", "add", "vc", *base, *creds, "--cluster", "DC0_C0")
    assert isinstance(made, dict)
    assert (made["cluster"], made["settings"]["cluster"]) == ("DC0_C0", "DC0_C0")
    split = ["--cluster", "ours", "--vs-cluster", "DC0_C0"]
    other = cli_json(server.cfg, "host", "add", "vc2", *base, *creds, *split)
    assert isinstance(other, dict)
    assert (other["cluster"], other["settings"]["cluster"]) == ("ours", "DC0_C0")
    wrong = cli(
        server.cfg,
        "host", "add", "vc3", *base, "--user", "admin", "--password", "nope",
        "--cluster", "DC0_C0",
        check=False,
    )  # fmt: skip
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: ")
    assert wrong.stderr.count("\n") == 1 and "s3cret" not in wrong.stderr + wrong.stdout
    hosts = cli_json(server.cfg, "host", "list")
    assert isinstance(hosts, list) and "vc3" not in {h["name"] for h in hosts}
