"""The common resource model: SQLAlchemy 2.0 typed tables shared by every frontend and backend.

One vocabulary inside: a ``Flavor`` (EC2's instance type, OCCI's resource_tpl), an ``Image``
(AMI, os_tpl), an ``Instance`` (instance, compute). A ``Target`` is anything placement chooses
among: a local host (libvirt or vSphere), a public-cloud region, or a peer cluster.

Ids are strings in EC2's shape (:mod:`broker.ids`). Timestamps are timezone-aware UTC. Hot paths
read these tables with Core ``select`` into tuples; the ORM classes are for writes and tooling.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored naive in UTC and read back aware (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        bytes: LargeBinary(),
    }


Id = String(32)


# --- tenancy -----------------------------------------------------------------------------------


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id"))
    role: Mapped[str] = mapped_column(String(16), default="user")  # admin | groupadmin | user
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccessKey(Base):
    __tablename__ = "access_keys"
    access_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Token(Base):
    """A bearer token for the admin API and OCCI; only its SHA-256 is stored."""

    __tablename__ = "tokens"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- where instances run -------------------------------------------------------------------------


class Cluster(Base):
    """A group of hosts. Its reservations apply to every member host that sets none of its own."""

    __tablename__ = "clusters"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    reserved_cpu: Mapped[float] = mapped_column(default=0.0)
    reserved_memory_mb: Mapped[float] = mapped_column(default=0.0)
    reserved_cpu_pct: Mapped[float] = mapped_column(default=0.0)
    reserved_memory_pct: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Target(Base):
    """A place an instance can run: a local host, a public-cloud region or a peer cluster.

    ``kind`` is host | region | peer; ``driver`` names the backend plugin (libvirt, vmware, ec2,
    peer). ``settings`` holds the driver's non-secret settings (URI, hypervisor, endpoint);
    ``secret_enc`` its credentials, encrypted. ``state``: enabled | disabled | draining | error.
    """

    __tablename__ = "targets"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    driver: Mapped[str] = mapped_column(String(32))
    cluster_id: Mapped[str | None] = mapped_column(ForeignKey("clusters.id"))
    hypervisor: Mapped[str] = mapped_column(String(16), default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    total_cpu: Mapped[int] = mapped_column(Integer, default=0)
    total_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    total_disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    reserved_cpu: Mapped[int] = mapped_column(Integer, default=0)
    reserved_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    reserved_cpu_pct: Mapped[float] = mapped_column(default=0.0)
    reserved_memory_pct: Mapped[float] = mapped_column(default=0.0)
    cpu_cost: Mapped[float] = mapped_column(default=0.0)  # per vCPU-hour, OpenNebula's CPU_COST
    memory_cost: Mapped[float] = mapped_column(default=0.0)  # per GiB-hour, its MEMORY_COST
    misses: Mapped[int] = mapped_column(Integer, default=0)
    last_seen_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class HostSample(Base):
    """One monitoring sample of a target, kept as a short history."""

    __tablename__ = "host_samples"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    used_cpu: Mapped[float] = mapped_column(default=0.0)
    used_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    free_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    free_disk_gb: Mapped[float] = mapped_column(default=0.0)
    load: Mapped[float] = mapped_column(default=0.0)
    running: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (Index("ix_host_samples_target_at", "target_id", "at"),)


# --- catalog -----------------------------------------------------------------------------------


class Flavor(Base):
    """An instance size. EC2 names (t3.micro) are rows, not code."""

    __tablename__ = "flavors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    price_per_hour: Mapped[float] = mapped_column(default=0.0)


class Image(Base):
    """A bootable image. ``kind`` is disk (a qcow2/raw file) or kernel (kernel + initrd boot)."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id"))
    visibility: Mapped[str] = mapped_column(String(16), default="private")  # private|group|public
    state: Mapped[str] = mapped_column(String(16), default="available")
    kind: Mapped[str] = mapped_column(String(16), default="disk")
    hypervisor: Mapped[str] = mapped_column(String(16), default="")  # "" = any
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    location: Mapped[str] = mapped_column(Text, default="")
    kernel: Mapped[str] = mapped_column(Text, default="")
    ramdisk: Mapped[str] = mapped_column(Text, default="")
    cmdline: Mapped[str] = mapped_column(Text, default="")
    root_device: Mapped[str] = mapped_column(String(32), default="/dev/vda")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str] = mapped_column(String(80), default="")
    min_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    source_instance_id: Mapped[str | None] = mapped_column(Id)
    mappings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # target -> remote id
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LaunchPermission(Base):
    __tablename__ = "launch_permissions"
    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    grantee: Mapped[str] = mapped_column(String(64), primary_key=True)  # user id, g-..., or "all"


# --- instances -----------------------------------------------------------------------------------


class Instance(Base):
    """One virtual machine, wherever it runs.

    ``intent`` is the backend action the service asked for and the scheduler has not carried out
    yet (launch, stop, start, ...); it survives a crash, so nothing asked is lost.
    """

    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id"))
    reservation_id: Mapped[str] = mapped_column(Id)
    launch_index: Mapped[int] = mapped_column(Integer, default=0)
    client_token: Mapped[str | None] = mapped_column(String(64))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    flavor: Mapped[str] = mapped_column(ForeignKey("flavors.name"))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    intent: Mapped[str | None] = mapped_column(String(16))
    intent_at: Mapped[dt.datetime | None]
    intent_target: Mapped[str | None] = mapped_column(Id)  # where a migration goes
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    target_id: Mapped[str | None] = mapped_column(ForeignKey("targets.id"))
    backend_ref: Mapped[str | None] = mapped_column(String(128))
    key_name: Mapped[str | None] = mapped_column(String(255))
    user_data: Mapped[bytes | None] = mapped_column(LargeBinary)
    zone: Mapped[str | None] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(255), default="")
    requirements: Mapped[str] = mapped_column(Text, default="")
    rank: Mapped[str] = mapped_column(Text, default="")
    hops: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[str] = mapped_column(String(64), default="")
    explanation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    private_ip: Mapped[str | None] = mapped_column(String(64))
    public_ip: Mapped[str | None] = mapped_column(String(64))
    console: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    launched_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]
    __table_args__ = (
        Index("ix_instances_owner_state", "owner_id", "state"),
        Index("ix_instances_owner_id_order", "owner_id", "id"),  # a tenant's pages in id order
        Index("ix_instances_group_id_order", "group_id", "id"),
        Index("ix_instances_state", "state"),
        Index("ix_instances_intent", "intent"),
        Index("ix_instances_target", "target_id"),
        UniqueConstraint("owner_id", "client_token", "launch_index", name="uq_instances_token"),
    )


class InstanceSecurityGroup(Base):
    __tablename__ = "instance_security_groups"
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), primary_key=True)


# --- networking ----------------------------------------------------------------------------------


class Network(Base):
    """A virtual network bound to a host bridge, with a range of leasable addresses."""

    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    bridge: Mapped[str] = mapped_column(String(32), default="")
    cidr: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(64), default="")
    dns: Mapped[str] = mapped_column(String(255), default="")
    range_start: Mapped[str] = mapped_column(String(64))
    range_end: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="available")  # available | down
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: where the search for a free address starts, as an offset from ``range_start`` (an IPv6
    #: address does not fit a column): every address of the range below it is leased. NULL: not
    #: known yet, the next allocation reads the leases once (see broker.service.networks)
    free_from: Mapped[int | None] = mapped_column(BigInteger)


class Lease(Base):
    """An address of a network given to one interface (or held fixed for a MAC)."""

    __tablename__ = "leases"
    network_id: Mapped[str] = mapped_column(
        ForeignKey("networks.id", ondelete="CASCADE"), primary_key=True
    )
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    mac: Mapped[str] = mapped_column(String(17))
    interface_id: Mapped[str | None] = mapped_column(Id, index=True)
    fixed: Mapped[bool] = mapped_column(Boolean, default=False)


class NetworkInterface(Base):
    __tablename__ = "network_interfaces"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    device_index: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str] = mapped_column(String(17))
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SecurityGroup(Base):
    __tablename__ = "security_groups"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_security_groups_owner_name"),)


class SecurityGroupRule(Base):
    __tablename__ = "security_group_rules"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True
    )
    egress: Mapped[bool] = mapped_column(Boolean, default=False)
    protocol: Mapped[str] = mapped_column(String(8))  # tcp | udp | icmp | -1
    from_port: Mapped[int | None] = mapped_column(Integer)
    to_port: Mapped[int | None] = mapped_column(Integer)
    cidr: Mapped[str | None] = mapped_column(String(64))
    source_group_id: Mapped[str | None] = mapped_column(Id)
    description: Mapped[str] = mapped_column(Text, default="")


class Address(Base):
    """A public address an owner holds (EC2's Elastic IP)."""

    __tablename__ = "addresses"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    public_ip: Mapped[str] = mapped_column(String(64), unique=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"))
    association_id: Mapped[str | None] = mapped_column(Id)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- storage -------------------------------------------------------------------------------------


class Volume(Base):
    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id"))
    size_gb: Mapped[int] = mapped_column(Integer)
    zone: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="available")
    snapshot_id: Mapped[str | None] = mapped_column(Id)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), index=True)
    device: Mapped[str | None] = mapped_column(String(32))
    attach_state: Mapped[str | None] = mapped_column(String(16))
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    target_id: Mapped[str | None] = mapped_column(ForeignKey("targets.id"))
    backend_ref: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Snapshot(Base):
    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    volume_id: Mapped[str] = mapped_column(Id)
    size_gb: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    description: Mapped[str] = mapped_column(Text, default="")
    backend_ref: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class KeyPair(Base):
    __tablename__ = "key_pairs"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(Text)
    key_type: Mapped[str] = mapped_column(String(16), default="rsa")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_key_pairs_owner_name"),)


# --- cross-cutting -------------------------------------------------------------------------------


class Tag(Base):
    __tablename__ = "tags"
    resource_id: Mapped[str] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    resource_type: Mapped[str] = mapped_column(String(32))
    __table_args__ = (Index("ix_tags_owner_key", "owner_id", "key"),)


class Event(Base):
    """The event log: every lifecycle transition and every operator change."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resource_id: Mapped[str] = mapped_column(Id, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # transition | audit | placement | error
    actor: Mapped[str] = mapped_column(String(64), default="")
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    __table_args__ = (Index("ix_events_kind_at", "kind", "at"),)


class Quota(Base):
    """A limit on what a user or a group may hold at once (absent: unlimited)."""

    __tablename__ = "quotas"
    subject_id: Mapped[str] = mapped_column(Id, primary_key=True)  # u-... or g-...
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    limit: Mapped[float] = mapped_column()


class PolicyVersion(Base):
    """Every burst and placement policy an operator set; the newest one is in force."""

    __tablename__ = "policy_versions"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- accounting and hooks ---------------------------------------------------------------------


class UsageRecord(Base):
    """What one instance used in one clock hour: where it ran, its size, and what that cost."""

    __tablename__ = "usage_records"
    instance_id: Mapped[str] = mapped_column(Id, primary_key=True)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)  # start of the clock hour, UTC
    owner_id: Mapped[str] = mapped_column(Id, index=True)
    group_id: Mapped[str] = mapped_column(Id, index=True)
    target_id: Mapped[str] = mapped_column(Id, default="")
    target_kind: Mapped[str] = mapped_column(String(16), default="")  # local | burst | peer
    flavor: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(default=0.0)
    __table_args__ = (Index("ix_usage_records_hour", "hour"),)


class Hook(Base):
    """A script or webhook an operator registered to run on matching events."""

    __tablename__ = "hooks"
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # script | webhook
    command: Mapped[str] = mapped_column(Text)  # the script's path, or the webhook's URL
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timeout_s: Mapped[float] = mapped_column(default=10.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class HookRun(Base):
    """One run of a hook for one event, with how it ended."""

    __tablename__ = "hook_runs"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    hook_id: Mapped[str] = mapped_column(ForeignKey("hooks.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # ok | failed | timeout
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str] = mapped_column(Text, default="")
