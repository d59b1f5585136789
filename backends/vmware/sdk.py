"""pyVmomi as this backend sees it: dynamic.

pyVmomi ships partial stubs: data objects' constructors are untyped and optional properties are
typed as always present, so strict mypy would have every spec built here cast or ignored. The
namespaces are therefore re-exported as ``Any`` from this one module; the backend's own code stays
strictly checked, and what crosses into the broker is plain typed data.
"""

from __future__ import annotations

from typing import Any

from pyVim import connect as _connect
from pyVmomi import vim as _vim
from pyVmomi import vmodl as _vmodl

vim: Any = _vim
vmodl: Any = _vmodl
SmartStubAdapter: Any = _connect.SmartStubAdapter
