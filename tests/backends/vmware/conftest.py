"""Fixtures: govmomi's vSphere simulator (built from Debian's packages; a failed build fails the
tests, it never skips them) and a broker runtime whose backend registry loads VmwareBackend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.vmware import vcsim
from backends.vmware.backend import VmwareBackend
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from tests.broker.test_serve import server  # noqa: F401  (a real serve, for CLI tests)


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    return vcsim.build()  # raises (the tests fail) when it cannot be built


def _start(mode: str, tmp: Path, **kw: object) -> Iterator[vcsim.Simulator]:
    sim = vcsim.start(mode, log=tmp / f"vcsim-{mode}.log", **kw)  # type: ignore[arg-type]
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(params=["esx", "vpx"])
def sim(
    request: pytest.FixtureRequest, vcsim_binary: Path, tmp_path: Path
) -> Iterator[vcsim.Simulator]:
    yield from _start(str(request.param), tmp_path)


@pytest.fixture
def esx(vcsim_binary: Path, tmp_path: Path) -> Iterator[vcsim.Simulator]:
    yield from _start("esx", tmp_path)


@pytest.fixture
def vpx_locked(vcsim_binary: Path, tmp_path: Path) -> Iterator[vcsim.Simulator]:
    """A vCenter simulator that accepts only admin / s3cret."""
    yield from _start("vpx", tmp_path, user="admin", password="s3cret")


@pytest.fixture
def vrt(sqlite_rt: Runtime) -> Runtime:
    """The SQLite runtime with a registry that loads VmwareBackend for the ``vmware`` driver."""
    assert sqlite_rt.backends is not None
    sqlite_rt.backends = BackendRegistry(
        sqlite_rt.engine,
        sqlite_rt.box.open,
        str(sqlite_rt.config.data_path),
        loader=lambda _d: VmwareBackend,  # type: ignore[arg-type,return-value]
    )
    return sqlite_rt
