"""Packaging for cloudbroker: the packages, the console script and the plugin entry points."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="cloudbroker",
    version="0.1.0",
    description="A hybrid cloud broker: EC2 and OCCI over KVM, Xen, VMware, EC2 and peers",
    long_description=Path("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["broker*", "frontends*", "backends*", "policies*"]),
    package_data={
        "broker": ["migrations/*.py", "migrations/*.mako", "migrations/versions/*.py"],
        "backends.libvirt": ["labfiles/*"],
        "backends.vmware": ["simulator/*.go"],
        "frontends.occi": ["*.json"],
        "frontends.web": ["templates/*.html", "static/*.css", "static/*.js"],
    },
    data_files=[("share/cloudbroker/config", ["config/broker.toml"])],
    install_requires=[
        "aiohttp>=3.14",
        "aiosqlite>=0.19",
        "alembic>=1.13",
        "asyncssh>=2.14",
        "boto3>=1.34",
        "click>=8.1",
        "cryptography>=42",
        "lxml>=5",
        "psycopg[binary]>=3.1",
        "jinja2>=3.1",
        "jsonschema>=4",
        "prometheus-client>=0.20",
        "pycdlib>=1.14",
        "pyvmomi>=8.0",
        "rich>=13",
        "SQLAlchemy[asyncio]>=2.0.25",
        "uvloop>=0.19",
    ],
    extras_require={
        "libvirt": ["libvirt-python>=9"],
        "test": [
            "libvirt-python>=9",
            "moto[server]>=5",
            "mypy>=1.8",
            "playwright>=1.40",
            "pytest>=8",
            "pytest-aiohttp>=1.0",
            "pytest-asyncio>=0.23",
            "ruff>=0.4",
        ],
    },
    entry_points={
        "console_scripts": ["cloudbroker = broker.cli:main"],
        "cloudbroker.frontends": [
            "admin = frontends.admin.app:create_app",
            "ec2 = frontends.ec2.app:create_app",
            "occi = frontends.occi.app:create_app",
        ],
        "cloudbroker.backends": [
            "libvirt = backends.libvirt.backend:LibvirtBackend",
            "vmware = backends.vmware.backend:VmwareBackend",
            "ec2 = backends.ec2.backend:Ec2Backend",
            "peer = backends.peer.backend:PeerBackend",
        ],
        "cloudbroker.commands": [
            "lab = backends.libvirt.labcli:lab",
            "peer = backends.peer.cli:peer",
            "group = broker.tenancycli:group",
            "hook = broker.hookcli:hook",
            "quota = broker.tenancycli:quota",
            "usage = broker.usagecli:usage",
            "showback = broker.usagecli:showback",
        ],
        "cloudbroker.local": [
            "libvirt = backends.libvirt.local:add_local_host",
        ],
        "cloudbroker.policies": [
            "default = policies.placement:DefaultPolicy",
        ],
    },
)
