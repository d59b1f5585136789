"""The configuration the Quick start runs with loads, and shows every section the code has."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from broker import config

SHIPPED = Path(__file__).parents[2] / "config" / "broker.toml"


def test_the_shipped_configuration_loads() -> None:
    loaded = config.load(SHIPPED, env={})
    assert loaded.ec2.rate_limit == 20.0 and loaded.policy is None


def test_it_names_every_section_and_key_the_code_knows() -> None:
    written = tomllib.loads(SHIPPED.read_text())
    defaults = config.Config()
    for section in config._SECTIONS:
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section))}
        assert set(written[section]) == keys, section
