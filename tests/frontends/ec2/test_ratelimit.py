"""Rate limits per access key: past its burst a key gets 503 RequestLimitExceeded (which boto3
backs off on), other keys go on, and a request whose signature fails spends nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from broker.config import from_mapping
from broker.errors import ConfigError
from broker.ratelimit import RateLimiter
from frontends.ec2.app import LIMITER, create_app
from tests.frontends.ec2.conftest import Server, client, new_tenant


@pytest.fixture
def limited(server: Server) -> Iterator[str]:
    """A second EC2 listener on the same broker, allowing 3 requests at once, then 0.01/s."""

    async def start() -> web.AppRunner:
        app = create_app(server.rt)
        app[LIMITER] = RateLimiter(0.01, 3)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = server.run(start())
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.run(runner.cleanup())


def test_a_key_past_its_burst_is_told_to_slow_down(server: Server, limited: str) -> None:
    alice, bob = new_tenant(server, "rl"), new_tenant(server, "rl")
    ec2 = client(server, alice, endpoint=limited)
    wrong = client(server, alice, endpoint=limited, secret="not-the-secret")
    for _ in range(2):
        with pytest.raises(ClientError) as refused:
            wrong.describe_regions()
        assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    for _ in range(3):  # bad signatures spent nothing: the whole burst is still there
        ec2.describe_regions()
    with pytest.raises(ClientError) as slow:
        ec2.describe_instances()
    assert slow.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    client(server, bob, endpoint=limited).describe_regions()  # other keys go on


@pytest.mark.parametrize(
    "ec2", [{"rate_limit": -1}, {"rate_limit": 5, "rate_burst": 0}, {"rate_limit": "fast"}]
)
def test_bad_rate_settings_are_refused(ec2: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"\[ec2\] rate"):
        from_mapping({"ec2": ec2}, env={})
