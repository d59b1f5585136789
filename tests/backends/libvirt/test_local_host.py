"""The ready image of a real local host: the tiny guest, built from Debian packages and
registered as a public image, so a first RunInstances has something to boot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from backends.libvirt.local import register_tiny_guest, tiny_guest_cache
from broker import model as m
from broker.runtime import Runtime
from broker.service import images
from tests.backends.libvirt.test_lab import CACHE
from tests.conftest import make_user

pytestmark = pytest.mark.slow


async def test_the_tiny_guest_is_registered_as_a_public_image(sqlite_rt: Runtime) -> None:
    image_id = await register_tiny_guest(sqlite_rt, CACHE)
    assert image_id is not None
    someone = await make_user(sqlite_rt, "someone")
    image = await images.get(sqlite_rt, someone, image_id)
    assert (image.name, image.kind, image.visibility) == ("tiny", "kernel", "public")
    async with sqlite_rt.engine.connect() as conn:
        found = await conn.execute(
            select(m.Image.kernel, m.Image.ramdisk, m.Image.cmdline).where(m.Image.id == image_id)
        )
        kernel, ramdisk, cmdline = found.one()
    assert Path(kernel).is_file() and Path(ramdisk).is_file()
    assert Path(kernel).parent == CACHE
    assert "console=ttyS0" in cmdline  # the console GetConsoleOutput reads


async def test_a_guest_that_cannot_be_built_registers_nothing_and_says_so(
    sqlite_rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    someone = await make_user(sqlite_rt, "someone")
    before = (await images.describe(sqlite_rt, someone)).items
    with caplog.at_level(logging.WARNING, logger="backends.libvirt.local"):
        assert await register_tiny_guest(sqlite_rt, blocker / "tiny") is None
    assert "cloudbroker image register" in caplog.text
    after = (await images.describe(sqlite_rt, someone)).items
    assert [i.id for i in after] == [i.id for i in before]


def test_the_cache_is_where_the_lab_and_the_tests_keep_it() -> None:
    repo = Path(__file__).resolve().parents[3]
    assert tiny_guest_cache(repo / "var") == repo / "var" / "cache" / "images" / "tiny"
