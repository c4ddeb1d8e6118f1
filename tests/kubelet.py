"""A clusters directory laid out as kubelet mounts a Secret, ConfigMap or projected volume,
and the real ``fleet-exporter serve`` as a child process over it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from .conftest import samples

REPO = Path(__file__).resolve().parents[1]


def kubelet_volume(directory: Path, generation: str, files: dict[str, str]) -> None:
    """Write ``files`` as kubelet does: into a fresh ``..<timestamp>`` directory, then a
    new ``..data`` symlink to it renamed over the old one (one atomic step), then per-key
    symlinks ``name -> ..data/name`` for new keys and none left for removed ones. Called
    again, it is an update of the volume."""
    directory.mkdir(exist_ok=True)
    gen = directory / generation
    gen.mkdir()
    for name, text in files.items():
        (gen / name).write_text(text)
        (gen / name).chmod(0o600)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    tmp = directory / "..data_tmp"
    os.symlink(generation, tmp)
    os.replace(tmp, directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    for entry in os.listdir(directory):
        if not entry.startswith(".") and entry not in files:
            os.unlink(directory / entry)
    if old is not None:
        for f in (directory / old).iterdir():
            f.unlink()
        (directory / old).rmdir()


class Exporter:
    """``fleet-exporter serve`` on 127.0.0.1 and a port of its choosing (read from its
    ``listening on`` line). Its stderr is collected in ``lines``."""

    def __init__(self, clusters: Path, *flags: str):
        self.clusters, self.flags = clusters, flags
        self.lines: list[str] = []
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._listening = asyncio.Event()

    async def __aenter__(self) -> Exporter:
        cmd = [sys.executable, "-m", "fleet_exporter", "serve", "--clusters", str(self.clusters)]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            "--listen",
            "127.0.0.1:0",
            *self.flags,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._listening.wait(), 30)
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            async with asyncio.timeout(30):
                while (await self.get("/-/ready"))[0] != 200:
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.url = f"http://127.0.0.1:{m.group(1)}"
                self._listening.set()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.text()

    async def metric(self, name: str, **labels: str) -> float | None:
        _, text = await self.get("/metrics")
        found = [
            v
            for (n, lbl), v in samples(text).items()
            if n == name and labels.items() <= dict(lbl).items()
        ]
        return found[0] if len(found) == 1 else None

    def log(self, needle: str) -> list[str]:
        return [line for line in self.lines if needle in line]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def __aexit__(self, *exc) -> None:
        if hasattr(self, "session"):
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5)
