"""Nothing secret reaches serve's log, even at debug level.

A real ``cloudbroker serve`` (test_serve's Server, logging at DEBUG through the same CLI entry
point) is given secrets every way they arrive: users made through the CLI with generated and
with chosen secret keys, signed EC2 calls from boto3 (good ones that launch and terminate an
instance, and one signed with a wrong secret), a bearer token issued and used on the admin API
and OCCI (plus a wrong one), HTTP Basic with the secret on OCCI (right and wrong). Then the log
is searched for every one of them, and for the key that encrypts secrets at rest and the
operator's own token.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from broker import config as brokerconfig
from tests.broker import test_serve
from tests.broker.test_serve import Server, cli_json, write_config

#: The CLI with the root logger at DEBUG first: serve's own basicConfig(level=INFO) then leaves
#: it alone, so every logger (ours, aiohttp's, the database drivers') writes what it has.
DEBUG_CLI = [
    sys.executable,
    "-c",
    "import logging, sys\n"
    "logging.basicConfig(level=logging.DEBUG,"
    " format='%(asctime)s %(levelname)s %(name)s %(message)s')\n"
    "sys.argv[0] = 'cloudbroker'\n"
    "from broker.cli import main\n"
    "main()\n",
]


@pytest.fixture
def debug_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(test_serve, "CLI", DEBUG_CLI)
    srv = Server(write_config(tmp_path))
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()


def _ec2(endpoint: str, key: str, secret: str) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="cloudbroker-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def _http(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, headers={"Accept": "text/uri-list", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def _wait_running(ec2: Any, iid: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        found = ec2.describe_instances(InstanceIds=[iid])
        state = found["Reservations"][0]["Instances"][0]["State"]["Name"]
        if state == "running" or time.monotonic() > deadline:
            assert state == "running", found
            return
        time.sleep(0.2)


def test_no_secret_reaches_the_log_at_debug_level(debug_server: Server) -> None:
    cfg_path = debug_server.cfg
    cfg = brokerconfig.load(cfg_path, env={})
    ec2_url = f"http://{cfg.ec2.listen}"
    occi_url = f"http://{cfg.occi.listen}"
    admin_url = f"http://{cfg.admin.listen}"
    data = cfg.data_path

    alice = cli_json(cfg_path, "user", "create", "alice")
    assert isinstance(alice, dict)
    chosen_secret = "Chosen+Secret/Value0123456789abcdefghijKLMN"
    bob = cli_json(
        cfg_path,
        "user",
        "create",
        "bob",
        "--access-key",
        "AKIABOBEXAMPLE000001",
        "--secret",
        chosen_secret,
    )
    assert isinstance(bob, dict)
    wrong_secret = "Wrong+Secret/NotTheRightOne0123456789abcd"
    token_view = cli_json(cfg_path, "user", "token", "alice")
    assert isinstance(token_view, dict)
    token = str(token_view["token"])

    good = _ec2(ec2_url, alice["access_key"], alice["secret_key"])
    images = good.describe_images()["Images"]
    run = good.run_instances(
        ImageId=images[0]["ImageId"], InstanceType="t3.micro", MinCount=1, MaxCount=1
    )
    iid = run["Instances"][0]["InstanceId"]
    _wait_running(good, iid)
    good.terminate_instances(InstanceIds=[iid])
    bobs = _ec2(ec2_url, "AKIABOBEXAMPLE000001", chosen_secret)
    assert bobs.describe_instances()["Reservations"] == []
    bad = _ec2(ec2_url, alice["access_key"], wrong_secret)
    with pytest.raises(ClientError) as refused:
        bad.describe_instances()
    assert refused.value.response["Error"]["Code"] in {"AuthFailure", "SignatureDoesNotMatch"}

    assert _http(f"{admin_url}/api/v1/instances", {"Authorization": f"Bearer {token}"}) == 200
    assert _http(f"{admin_url}/api/v1/users", {"Authorization": f"Bearer {wrong_secret}"}) == 401
    assert _http(f"{occi_url}/compute/", {"X-Auth-Token": token}) == 200
    for secret, status in ((chosen_secret, 200), (wrong_secret, 401)):
        basic = {"Authorization": _basic("AKIABOBEXAMPLE000001", secret)}
        assert _http(f"{occi_url}/compute/", basic) == status

    assert debug_server.kill(signal.SIGTERM) == 0
    log = (cfg_path.parent / "serve.log").read_text()
    assert " DEBUG " in log, "the log is not at debug level: the check would be lenient"
    assert "403 SignatureDoesNotMatch" in log  # the refused call was logged: the log is live

    operator = json.loads((data / "operator.json").read_text())
    fernet_key = (data / "secret.key").read_bytes().strip().decode()
    secrets = {
        "alice's secret key": alice["secret_key"],
        "bob's chosen secret key": chosen_secret,
        "the wrong secret": wrong_secret,
        "the issued token": token,
        "the operator's token": operator["token"],
        "the key that encrypts secrets at rest": fernet_key,
        "Basic credentials": _basic("AKIABOBEXAMPLE000001", chosen_secret).split()[1],
    }
    for what, value in secrets.items():
        assert len(value) >= 16, what
        for piece in {value, value[:16], value[-16:]}:  # also no truncated or partial copy
            assert piece not in log, f"{what} appears in serve's log"
