"""Upstream manners (``kube``) against the simulator's real TLS API server: a Retry-After
is honoured when it fits before the deadline and fails the call at once when it does not,
saying so; a redirect is never followed, wherever it points."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from fleet_exporter.config import Settings
from fleet_exporter.credentials import load_credentials
from fleet_exporter.kube import KubeClient, UpstreamError, new_session, retry_after
from fleet_exporter.longhorn import RESOURCES
from simulator.fleet import ClusterSpec

from .conftest import started_env, value, wait_for

SPECS = [
    ClusterSpec(name="healthy", volumes=3, nodes=2, seed=21),
    ClusterSpec(name="victim", volumes=3, nodes=2, seed=22),
]
HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}


@pytest.fixture
async def env(tmp_path):
    async with started_env(tmp_path, SPECS) as e:
        yield e


async def fetch(env, deadline_in: float = 10.0) -> tuple[bytes, float]:
    """One page of the victim's volumes straight through KubeClient: body, seconds."""
    creds = await load_credentials(env.clusters / "victim.yaml")
    async with new_session() as session:
        client = KubeClient(session, creds, Settings())
        started = time.monotonic()
        page = await client.fetch_page("volumes", "", time.monotonic() + deadline_in)
        return page.body, time.monotonic() - started


def last_log(env, cluster: str) -> str:
    return env.fleet.clusters[cluster].history.records()[0].log


async def test_retry_after_past_the_deadline_fails_the_call_at_once(env):
    env.sim.set_fault("victim", "throttle")  # 429, Retry-After: 3600
    started = time.monotonic()
    _, smp, _ = await env.probe("victim", headers=HEADERS)
    assert value(smp, "probe_success") == 0
    assert time.monotonic() - started < 3  # no waiting, no retries
    assert "429: Too many requests, please try again later; retry after 3600s, past this " \
           "refresh's deadline" in last_log(env, "victim")  # fmt: skip
    assert all(env.sim.requests("victim", r) <= 1 for r in RESOURCES)
    with pytest.raises(UpstreamError) as err:
        await fetch(env)
    assert err.value.code == "429" and err.value.retry_after == 3600  # for a back-off


async def test_retry_after_as_an_http_date(env):
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    env.sim.fault_settings.retry_after = format_datetime(in_an_hour, usegmt=True)
    env.sim.set_fault("victim", "throttle")
    with pytest.raises(UpstreamError, match=r"retry after (3600|3599)s, past") as err:
        await fetch(env)
    assert 3590 < err.value.retry_after <= 3600
    assert env.sim.requests("victim", "volumes") == 1


async def test_retry_after_within_the_deadline_is_waited_for(env):
    env.sim.fault_settings.retry_after = "1"
    env.sim.set_fault("victim", "throttle", resource="volumes")
    call = asyncio.create_task(fetch(env))
    await wait_for(lambda: env.sim.requests("victim", "volumes") == 1, timeout=10)
    env.sim.clear_faults("victim")  # the server is fine again by the time we come back
    body, seconds = await call
    assert b'"kind":"VolumeList"' in body
    assert seconds >= 1.0  # waited as asked (the back-off alone would be 0.2 s)
    assert env.sim.requests("victim", "volumes") == 2


def test_retry_after_values():
    assert retry_after("120") == 120.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 85 < retry_after(soon) <= 90
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: no wait
    for unreadable in (None, "", "soon", "-5", "1.5e3"):
        assert retry_after(unreadable) is None


@pytest.mark.parametrize("target", ["other host", "another cluster on the same host"])
async def test_redirects_are_refused_never_followed(env, target):
    port = env.sim.port
    host = "localhost" if target == "other host" else "127.0.0.1"
    # Both answer with a certificate the kubeconfig's CA trusts: following would work.
    env.sim.fault_settings.redirect_to = f"https://{host}:{port}/clusters/healthy"
    env.sim.set_fault("victim", "redirect")
    before = env.sim.requests("healthy")
    _, smp, _ = await env.probe("victim", headers=HEADERS)
    assert value(smp, "probe_success") == 0
    assert f"HTTP 302 redirect to {host}:{port} refused" in last_log(env, "victim")
    assert env.sim.requests("healthy") == before  # never followed
    _, metrics, _ = await env.get("/metrics")
    assert 'cluster="victim"' in metrics and 'code="redirect"' in metrics
