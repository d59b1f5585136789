"""The commented examples in config/examples/ load through the real configuration loader (a key
the code no longer accepts fails here), their values take effect, and an example's [policy]
is accepted by a starting broker exactly as `serve` would apply it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import config
from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.errors import ConfigError
from broker.service import policies

EXAMPLES = Path(__file__).parents[2] / "config" / "examples"
FILES = sorted(EXAMPLES.glob("*.toml"))


def test_there_are_examples_for_the_usual_starts() -> None:
    assert {p.stem for p in FILES} >= {"postgresql", "burst-ec2", "federation", "production-tls"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_example_loads_and_is_commented(path: Path) -> None:
    loaded = config.load(path, env={})
    assert loaded.source == str(path)
    text = path.read_text()
    assert text.startswith("# Example: ")
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_a_stale_key_in_an_example_would_be_refused(path: Path, tmp_path: Path) -> None:
    """The loader these tests rely on does refuse what it does not know, for every example."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("[broker]\n", "[broker]\nno_such_key = 1\n", 1))
    with pytest.raises(ConfigError, match=r"\[broker\] no_such_key"):
        config.load(copy, env={})


def test_postgresql() -> None:
    cfg = config.load(EXAMPLES / "postgresql.toml", env={})
    assert cfg.database_url.startswith("postgresql+psycopg://cloudbroker:")
    assert cfg.database_url.endswith("@db.example.net:5432/cloudbroker")
    assert cfg.data_path == Path("/var/lib/cloudbroker")
    assert cfg.monitor.interval == 10.0 and cfg.accounting.interval == 300.0
    assert cfg.ec2.listen == "127.0.0.1:8773"  # untouched keys keep the embedded default
    env = {"CLOUDBROKER_DATABASE_URL": "postgresql+psycopg://u:p@other/db"}
    assert config.load(EXAMPLES / "postgresql.toml", env=env).database_url.endswith("@other/db")


def test_production_tls() -> None:
    cfg = config.load(EXAMPLES / "production-tls.toml", env={})
    assert cfg.ec2.listen == "0.0.0.0:8773" and cfg.occi.listen == "0.0.0.0:8787"
    assert cfg.ec2.tls_cert.endswith(".crt") and cfg.ec2.tls_key.endswith(".key")
    assert cfg.occi.tls_cert == cfg.ec2.tls_cert
    assert cfg.admin.listen.startswith("127.0.0.1:") and cfg.admin.tls_cert == ""
    assert (cfg.ec2.rate_limit, cfg.ec2.rate_burst) == (10.0, 50)
    assert cfg.broker.local_host == "none" and cfg.database.url == ""
    assert cfg.scheduler.in_flight_per_target == 8 and cfg.hooks.concurrency == 4


def test_federation() -> None:
    cfg = config.load(EXAMPLES / "federation.toml", env={})
    assert cfg.broker.site_id == "site-a" and cfg.broker.region == "site-a"
    assert cfg.ec2.listen == "0.0.0.0:8773" and cfg.admin.tls_key.endswith("site-a.key")
    assert cfg.policy is not None
    assert cfg.policy["placement"]["max_hops"] == 1
    assert [t["name"] for t in cfg.policy["targets"]] == ["site-b"]


def _local(path: Path, tmp: Path) -> config.Config:
    """The example with its data and database moved to ``tmp`` through the environment
    overrides an operator's container would use; everything else as written."""
    env = {
        "CLOUDBROKER_BROKER_DATA_DIR": str(tmp),
        "CLOUDBROKER_BROKER_LOCAL_HOST": "none",
        "CLOUDBROKER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'broker.db'}",
    }
    return config.load(path, env=env)


@pytest.mark.parametrize("name", ["burst-ec2", "federation"])
async def test_the_policy_of_an_example_is_put_in_force_on_start(name: str, tmp_path: Path) -> None:
    cfg = _local(EXAMPLES / f"{name}.toml", tmp_path)
    assert cfg.data_path == tmp_path
    rt = await open_runtime(cfg)
    try:
        (version,) = await policies.history(rt, SYSTEM)
        assert version.author == "broker.toml"
        document = version.document
    finally:
        await rt.aclose()
    written = cfg.policy
    assert written is not None
    assert document["default"] == dict(written["default"])
    assert [t["name"] for t in document["targets"]] == [t["name"] for t in written["targets"]]
    if name == "burst-ec2":
        (target,) = document["targets"]
        assert target["max_instances"] == 20 and target["max_spend_per_hour"] == 2.5
        assert target["prices"]["t3.micro"] == 0.0104
        assert document["groups"]["batch"] == {"trigger": "pending_longer_than", "seconds": 600}
        assert document["placement"]["preset"] == "packing"
