"""The broker's configuration: one TOML file, typed, with unknown keys refused by name.

Every key has a default, so an empty file (or none) gives the embedded default: SQLite under
``./var``, the three frontends on loopback. ``CLOUDBROKER_<SECTION>_<KEY>`` environment variables
override the file (``CLOUDBROKER_DATABASE_URL=postgresql+psycopg://...``), for containers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.errors import ConfigError

#: the most processes one listener may be served from (``[ec2] workers``)
MAX_WORKERS = 64


@dataclasses.dataclass(frozen=True)
class BrokerSection:
    data_dir: str = "./var"
    region: str = "cloudbroker-1"
    site_id: str = ""
    local_host: str = "auto"  # auto | libvirt | simulated | none
    seed: bool = True  # flavors, the default network and the ready image on first start
    kept_answers: int = 1024  # answers kept per frontend while the database is unchanged


@dataclasses.dataclass(frozen=True)
class DatabaseSection:
    url: str = ""  # empty: sqlite under data_dir


@dataclasses.dataclass(frozen=True)
class ListenerSection:
    listen: str = ""
    enabled: bool = True
    tls_cert: str = ""
    tls_key: str = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's TLS context (None: plain HTTP)."""
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate {self.tls_cert}: {exc}") from None
        return ctx


@dataclasses.dataclass(frozen=True)
class Ec2Section(ListenerSection):
    rate_limit: float = 0.0  # requests per second per access key; 0: no limit
    rate_burst: int = 100  # requests a key may send at once before the rate applies
    workers: int = 0  # processes of their own serving this listener (broker/workers.py); 0: none


@dataclasses.dataclass(frozen=True)
class MonitorSection:
    interval: float = 5.0
    misses: int = 3
    history: int = 120
    probe_timeout: float = 20.0


@dataclasses.dataclass(frozen=True)
class SchedulerSection:
    interval: float = 1.0
    batch: int = 500
    in_flight_per_target: int = 16
    max_attempts: int = 3
    stop_timeout: float = 60.0


@dataclasses.dataclass(frozen=True)
class AccountingSection:
    interval: float = 60.0
    batch: int = 200


@dataclasses.dataclass(frozen=True)
class HooksSection:
    """How the hook runner works (broker/hooks.py)."""

    concurrency: int = 8  # runs at once
    poll_interval: float = 1.0  # seconds between reads of the event log when idle
    batch: int = 500  # events read at once
    output_limit: int = 4096  # bytes of output kept per run
    gap_wait: float = 60.0  # seconds a skipped event id is waited for

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch < 1 or self.output_limit < 1:
            raise ConfigError("[hooks] concurrency, batch and output_limit must be at least 1")
        if not self.poll_interval > 0 or self.gap_wait < 0:
            raise ConfigError("[hooks] poll_interval must be positive and gap_wait not negative")


@dataclasses.dataclass(frozen=True)
class Config:
    broker: BrokerSection = BrokerSection()
    database: DatabaseSection = DatabaseSection()
    ec2: Ec2Section = Ec2Section(listen="127.0.0.1:8773")
    occi: ListenerSection = ListenerSection(listen="127.0.0.1:8787")
    admin: ListenerSection = ListenerSection(listen="127.0.0.1:8780")
    monitor: MonitorSection = MonitorSection()
    scheduler: SchedulerSection = SchedulerSection()
    accounting: AccountingSection = AccountingSection()
    hooks: HooksSection = HooksSection()
    policy: Mapping[str, Any] | None = None  # [policy]: a burst policy document (optional)
    source: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.broker.data_dir).resolve()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_path / 'broker.db'}"


def dumps(cfg: Config) -> str:
    """``cfg`` as JSON, for a process of the same broker (:func:`loads` reads it back)."""
    return json.dumps(dataclasses.asdict(cfg))


def loads(text: str) -> Config:
    """The configuration :func:`dumps` wrote, exactly: no file is read and no env applied."""
    data = json.loads(text)
    sections = {s: type(getattr(Config(), s))(**data[s]) for s in _SECTIONS}
    return Config(**sections, policy=data["policy"], source=data["source"])


_SECTIONS = (
    "broker",
    "database",
    "ec2",
    "occi",
    "admin",
    "monitor",
    "scheduler",
    "accounting",
    "hooks",
)


def _coerce(section: str, key: str, raw: Any, default: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "0", "false", "no"}:
            return raw.lower() in {"1", "true", "yes"}
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    return raw


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML plus environment overrides."""
    base = Config()
    merged: dict[str, dict[str, Any]] = {}
    policy = data.get("policy")
    if policy is not None and not isinstance(policy, Mapping):
        raise ConfigError("[policy] must be a table")
    for section, values in data.items():
        if section == "policy":
            continue  # a document the policy plugin validates when the broker starts
        if section not in _SECTIONS:
            raise ConfigError(f"unknown configuration section [{section}]")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        merged[section] = dict(values)
    for name, value in (env or {}).items():
        if not name.startswith("CLOUDBROKER_") or name.count("_") < 2:
            continue
        _, section, key = name.lower().split("_", 2)
        if section in _SECTIONS:
            merged.setdefault(section, {})[key] = value
    kwargs: dict[str, Any] = {}
    for section in _SECTIONS:
        current = getattr(base, section)
        fields = {f.name for f in dataclasses.fields(current)}
        updates = {}
        for key, raw in merged.get(section, {}).items():
            if key not in fields:
                raise ConfigError(f"unknown configuration key [{section}] {key}")
            updates[key] = _coerce(section, key, raw, getattr(current, key))
        kwargs[section] = dataclasses.replace(current, **updates)
    for section in ("ec2", "occi", "admin"):
        _check_listen(section, kwargs[section].listen)
    if min(kwargs[s].interval for s in ("monitor", "scheduler", "accounting")) <= 0:
        raise ConfigError("intervals must be positive")
    ec2 = kwargs["ec2"]
    if not 0 <= ec2.rate_limit < float("inf") or (ec2.rate_limit > 0 and ec2.rate_burst < 1):
        raise ConfigError("[ec2] rate_limit must be 0 or more, and rate_burst at least 1")
    if not 0 <= ec2.workers <= MAX_WORKERS:
        raise ConfigError(f"[ec2] workers must be 0 to {MAX_WORKERS}")
    if ec2.workers > 1 and ec2.rate_limit > 0:
        # each process holds its own buckets: with two or more the limit would multiply
        raise ConfigError("[ec2] rate_limit needs workers = 0 or 1 (one process keeps the buckets)")
    if kwargs["broker"].kept_answers < 0:
        raise ConfigError("[broker] kept_answers must be 0 (keep none) or more")
    if kwargs["accounting"].batch < 1:
        raise ConfigError("[accounting] batch must be at least 1")
    return Config(**kwargs, policy=policy)


def _check_listen(section: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"[{section}] listen: expected host:port, got {value!r}")


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read the configuration file at ``path`` (None: defaults only) and apply ``env``."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        source = str(p)
    cfg = from_mapping(data, env)
    if path is not None and not cfg.broker.data_dir.startswith("/"):
        # a relative data_dir in a file is relative to the file, not to where serve was started
        data_dir = str((Path(path).resolve().parent / cfg.broker.data_dir).resolve())
        if "broker" in data and "data_dir" in data["broker"]:
            cfg = dataclasses.replace(
                cfg, broker=dataclasses.replace(cfg.broker, data_dir=data_dir)
            )
    return dataclasses.replace(cfg, source=source)
