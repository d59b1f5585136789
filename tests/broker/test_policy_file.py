"""The [policy] table of broker.toml: validated at start, applied when the file's text changed,
never over an operator's later change made through the CLI or the admin API."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from broker import config
from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.errors import ConfigError
from broker.service import policies
from policies.placement import DefaultPolicy
from tests.conftest import make_config

TOML = """
[broker]
data_dir = "{data}"
local_host = "none"

[database]
url = "{url}"

[policy.default]
trigger = "{trigger}"
{extra}
"""


def _config(tmp: Path, url: str, trigger: str, extra: str = "") -> config.Config:
    path = tmp / "broker.toml"
    path.write_text(TOML.format(data=tmp, url=url, trigger=trigger, extra=extra))
    return config.load(path, env={})


async def _history(tmp: Path, url: str) -> list[Any]:
    rt = await open_runtime(make_config(tmp, url), migrate=False)
    try:
        return [
            (v.author, v.document["default"]["trigger"]) for v in await policies.history(rt, SYSTEM)
        ]
    finally:
        await rt.aclose()


async def _start(cfg: config.Config) -> None:
    rt = await open_runtime(cfg, migrate=False)
    await rt.aclose()


async def test_the_file_applies_once_and_an_operator_change_stands(
    tmp_path: Path, db_url: str
) -> None:
    await _start(_config(tmp_path, db_url, "never"))
    await _start(_config(tmp_path, db_url, "never"))  # unchanged text: no new version
    assert await _history(tmp_path, db_url) == [("broker.toml", "never")]

    rt = await open_runtime(make_config(tmp_path, db_url), migrate=False)
    try:
        await policies.set_policy(rt, SYSTEM, {"default": {"trigger": "no_local_fit"}}, "cli")
    finally:
        await rt.aclose()
    await _start(_config(tmp_path, db_url, "never"))  # the file did not change: the CLI's stands
    assert (await _history(tmp_path, db_url))[0] == ("system", "no_local_fit")

    await _start(
        _config(tmp_path, db_url, "pending_longer_than", "seconds = 600")
    )  # edited: applied
    assert (await _history(tmp_path, db_url))[0] == ("broker.toml", "pending_longer_than")


async def test_an_invalid_policy_stops_the_start_and_changes_nothing(
    tmp_path: Path, db_url: str
) -> None:
    with pytest.raises(ConfigError, match=r"\[policy\].*default\.trigger"):
        await _start(_config(tmp_path, db_url, "sometimes"))
    assert await _history(tmp_path, db_url) == []


def test_policy_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[policy\] must be a table"):
        config.from_mapping({"policy": 3}, env={})


def test_the_commented_example_in_the_default_configuration_is_a_valid_policy() -> None:
    text = (Path(__file__).parents[2] / "config" / "broker.toml").read_text()
    after = text.split("For example:", 1)[1].splitlines()[1:]
    example = "\n".join(line.removeprefix("#").removeprefix(" ") for line in after)
    document = tomllib.loads(example)["policy"]
    DefaultPolicy.from_document(document)  # raises with the bad field's path if it is not
