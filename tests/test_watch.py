"""Config changes reach every replica by themselves: the real ``serve`` process over a
clusters directory laid out as kubelet mounts a Secret + ConfigMap projected volume, updated
the way kubelet updates it (a ``..data`` swap), with no signal and no HTTP call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from fleet_exporter.selfmetrics import SelfMetrics
from fleet_exporter.watch import Watch, signature
from simulator.fleet import ClusterSpec
from simulator.server import SimulatedFleet

from .conftest import samples, value, wait_for
from .kubelet import Exporter, kubelet_volume

INTERVAL = 0.5  # the test's --config.watch-interval
# A cache TTL far longer than the test: a probe of an unchanged cluster never refreshes.
FLEET_YAML = "defaults: {cache_ttl: 10m, max_staleness: 20m}\n"


async def targets(e: Exporter) -> list[str]:
    status, body = await e.get("/targets")
    assert status == 200
    return sorted(g["targets"][0] for g in json.loads(body))


async def probe_ok(e: Exporter, cluster: str) -> bool:
    status, text = await e.get(f"/probe?cluster={cluster}")
    return status == 200 and value(samples(text), "probe_success") == 1


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_secret_update_reaches_every_replica(tmp_path, replicas):
    specs = [ClusterSpec(name=n, volumes=3, nodes=1, seed=i) for i, n in enumerate("abcd")]
    async with SimulatedFleet(specs) as sim:
        kubeconfigs = {
            f"{n}.yaml": p.read_text() for n, p in sim.write_kubeconfigs(tmp_path / "src").items()
        }
        clusters = tmp_path / "clusters"
        first = {k: kubeconfigs[k] for k in ("a.yaml", "b.yaml", "c.yaml")}
        kubelet_volume(clusters, "..2026_12_02_10_00_00.123", {**first, "fleet.yaml": FLEET_YAML})
        flags = ("--config.watch-interval", f"{INTERVAL}s")
        exporters = [Exporter(clusters, *flags) for _ in range(replicas)]
        for e in exporters:
            await e.__aenter__()
        try:
            for e in exporters:
                assert await targets(e) == ["a", "b", "c"]
                assert await probe_ok(e, "a")
            calls = sim.requests("a")

            # Probe the unchanged cluster all along, on every replica.
            answers: list[bool] = []
            stop = asyncio.Event()

            async def keep_probing() -> None:
                while not stop.is_set():
                    for e in exporters:
                        answers.append(await probe_ok(e, "a"))
                    await asyncio.sleep(0.05)

            prober = asyncio.create_task(keep_probing())
            # kubelet's update: c removed, d added, a and b byte for byte the same.
            second = {k: kubeconfigs[k] for k in ("a.yaml", "b.yaml", "d.yaml")}
            swapped = time.monotonic()
            kubelet_volume(
                clusters, "..2026_12_02_10_05_00.456", {**second, "fleet.yaml": FLEET_YAML}
            )
            for e in exporters:
                await wait_for(lambda e=e: _is(targets(e), ["a", "b", "d"]), timeout=10)
            took = time.monotonic() - swapped
            assert took < INTERVAL + 5, took  # the interval plus the reload, with room
            for e in exporters:
                assert await probe_ok(e, "d")
                assert (await e.get("/probe?cluster=c"))[0] == 400
            await asyncio.sleep(2 * INTERVAL)  # a few more checks, and no change
            stop.set()
            await prober
            assert answers and all(answers)
            assert sim.requests("a") == calls  # served from its cache throughout

            for e in exporters:
                # Said once, with the names; not once per check.
                changes = e.log("reload (watch): ")
                assert len(changes) == 1, e.lines
                assert "added d; removed c;" in changes[0]
                reloads = await e.metric(
                    "fleet_exporter_config_reloads_total", trigger="watch", result="success"
                )
                assert reloads is not None and reloads >= 1
                checked = await e.metric("fleet_exporter_config_last_check_timestamp_seconds")
                assert checked is not None and time.time() - checked < 5
                assert await e.metric("fleet_exporter_config_watch_interval_seconds") == INTERVAL
            hashes = {await e.metric("fleet_exporter_config_hash") for e in exporters}
            assert len(hashes) == 1  # the replicas agree on what they serve

            # SIGHUP is counted as such, and finds nothing new.
            exporters[0].signal(signal.SIGHUP)
            await wait_for(
                lambda: _is(
                    exporters[0].metric(
                        "fleet_exporter_config_reloads_total", trigger="signal", result="success"
                    ),
                    1.0,
                ),
                timeout=10,
            )
        finally:
            for e in exporters:
                await e.__aexit__()
        for e in exporters:
            assert e.proc.returncode == 0
            assert not [ln for ln in e.lines if "level=error" in ln], e.lines


async def _is(coro, expected) -> bool:
    return await coro == expected


def test_signature_sees_each_kind_of_change(tmp_path):
    d = tmp_path / "clusters"
    kubelet_volume(d, "..2026_12_02_10_00_00.123", {"a.yaml": "one", "fleet.yaml": ""})
    first = signature(d)
    assert signature(d) == first
    # A ..data swap to a generation with the same bytes still changes what a.yaml is.
    kubelet_volume(d, "..2026_12_02_10_01_00.123", {"a.yaml": "one", "fleet.yaml": ""})
    second = signature(d)
    assert second != first
    # A plain edit in place (same size), a new file, a removed one.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.yaml").write_text("one")
    before = signature(plain)
    os.utime(plain / "a.yaml", ns=(1, 1))
    (plain / "a.yaml").write_text("two")
    assert signature(plain) != before
    before = signature(plain)
    (plain / "b.yaml").write_text("x")
    assert signature(plain) != before
    before = signature(plain)
    (plain / "b.yaml").unlink()
    assert signature(plain) != before


async def test_watch_reloads_only_on_change_and_survives_a_failure(tmp_path):
    calls: list[str] = []
    failures = iter([RuntimeError("a bug"), None, None])

    async def reload() -> None:
        calls.append("reload")
        error = next(failures)
        if error:
            raise error

    (tmp_path / "a.yaml").write_text("x")
    metrics = SelfMetrics()
    watch = Watch(tmp_path, 60, reload, metrics)
    await watch.baseline()
    assert await watch.check() is False
    (tmp_path / "b.yaml").write_text("y")
    assert await watch.check() is True  # the reload raised: logged, the watch goes on
    assert await watch.check() is False
    (tmp_path / "b.yaml").unlink()
    assert await watch.check() is True
    assert calls == ["reload", "reload"]
    # A directory that cannot be listed: no reload, no new check time, and it recovers.
    checked = metrics.watch_time._value.get()
    (tmp_path / "a.yaml").rename(tmp_path.parent / "moved-a.yaml")
    tmp_path.rename(tmp_path.parent / "gone")
    assert await watch.check() is False
    assert metrics.watch_time._value.get() == checked
    (tmp_path.parent / "gone").rename(tmp_path)
    assert await watch.check() is True  # a.yaml went away meanwhile
