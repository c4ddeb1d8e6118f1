"""The ``fleet-exporter`` command: serve, demo, probe, check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__
from .config import ConfigError, parse_duration
from .limits import raise_file_limit
from .logs import setup_logging
from .terminal import add_subcommand as add_triage
from .watch import DEFAULT_INTERVAL
from .web.webconfig import WebConfig, WebConfigError

log = logging.getLogger("fleet_exporter")

DEFAULT_PORT = 9265
BACKLOG = 128  # aiohttp's default
SETTLE = web.AppKey("settle_heap", asyncio.Task)


def parse_listen(value: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {value!r}: use HOST:PORT")
    host = host.strip("[]")
    return (host or None), int(port)


class ListenError(Exception):
    """The listen address cannot be used; the message is one line for people."""


def bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (every interface when
    None), made as asyncio's ``create_server`` makes them, but before anything else
    starts: a start that cannot listen loads no credentials and runs no exec plugin."""
    where = f"[{host}]:{port}" if host and ":" in host else f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ListenError(f"cannot listen on {where}: cannot resolve {host!r}: {reason}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # an address family this host does not have
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6 and host is None:
                    sockets.pop().close()  # IPv6 is off here; IPv4 still serves
                    continue
                raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
        if not sockets:
            raise ListenError(f"cannot listen on {where}: no usable address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(args: argparse.Namespace, directory: Path) -> int:
    """Each way a start can fail ends in one line, ``cannot start: ...``, and exit code 2;
    nothing before it claims the server runs."""
    from .fleet import Fleet
    from .knobs import limit_heap_fragmentation, settle_heap
    from .web import FLEET
    from .web.app import create_app

    web_config = None
    if args.web_config_file:
        try:
            web_config = WebConfig.load(Path(args.web_config_file))
        except WebConfigError as e:
            log.error("cannot start: %s", e)
            return 2
    host, port = args.listen
    try:
        sockets = bind(host, port)
    except ListenError as e:
        log.error("cannot start: %s", e)
        return 2
    files = raise_file_limit()  # a few connections per cluster: 1024 is not enough for 500
    limit_heap_fragmentation()
    if files.raised_from is not None:
        log.info("open files limit raised from %d to %d", files.raised_from, files.soft)
    fleet = Fleet(directory)
    app = create_app(
        fleet, watch_interval=args.watch_interval, enable_lifecycle=args.web_enable_lifecycle
    )
    if web_config is not None:
        # Outermost: TLS peer checks, rate limit and basic auth come before any handler.
        app.middlewares.insert(0, web_config.middleware)

    async def on_startup(app: web.Application) -> None:
        # Runs after the fleet read its directory (create_app's cleanup context comes
        # first), on sockets already bound: from here on the server runs.
        loop = asyncio.get_running_loop()

        async def reload() -> None:
            # A failure is logged by the fleet, and the running configuration stays.
            with contextlib.suppress(ConfigError):
                await app[FLEET].reload("signal")

        reloads: set[asyncio.Task[None]] = set()  # held: a task nobody holds may vanish

        def on_sighup() -> None:
            task = asyncio.ensure_future(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)

        async def settle() -> None:
            await app[FLEET].wait_ready()
            settle_heap()  # the startup heap leaves the collector's sight (bench/README.md)

        app[SETTLE] = asyncio.create_task(settle())  # held: a task nobody holds may vanish
        watching = f"every {args.watch_interval:g}s" if args.watch_interval else "off"
        log.info(
            "fleet-exporter %s listening on %s (clusters in %s, watch %s)",
            __version__,
            ", ".join(_address(s) for s in sockets),
            directory,
            watching,
        )

    app.on_startup.append(on_startup)
    try:
        web.run_app(
            app,
            sock=sockets,
            shutdown_timeout=args.shutdown_timeout,
            ssl_context=web_config.ssl_context if web_config else None,
            print=None,
            access_log=logging.getLogger("aiohttp.access"),
        )
    except ConfigError as e:
        log.error("cannot start: %s", e)
        return 2
    finally:
        for sock in sockets:
            sock.close()
    return 0


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def parse_interval(value: str) -> float:
    """``--config.watch-interval``: seconds or a duration (``10s``, ``1m``); 0 = off."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value, "--config.watch-interval")
        except ConfigError:
            seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid interval {value!r}: use e.g. 10s or 1m, or 0 to turn the watch off"
        )
    return seconds


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args, Path(args.clusters))


async def _one_shot(directory: Path, only: set[str] | None, wait: float):
    """Load the fleet (or part of it) and probe each cluster once, concurrently."""
    from .fleet import Fleet

    # The commands print each cluster's outcome, so the fleet does not log it as well.
    fleet = Fleet(directory, only=only, report=False)
    await fleet.start()
    try:
        await fleet.wait_ready()
        names = sorted(fleet.clusters)
        lookups = await asyncio.gather(*(fleet.lookup(fleet.clusters[n], wait) for n in names))
        results = {}
        for name, lookup in zip(names, lookups, strict=True):
            refresh = lookup.value
            body = b""
            if refresh is not None:
                body = refresh.text()
            results[name] = (lookup, body)
        return fleet, results
    finally:
        await fleet.close()


def cmd_probe(args: argparse.Namespace) -> int:
    from .exposition import encode
    from .web.probe import head_families, probe_log

    directory = Path(args.clusters)
    started_at, started = time.time(), time.monotonic()
    fleet, results = asyncio.run(_one_shot(directory, {args.cluster}, args.timeout))
    if args.cluster not in results:
        known = ", ".join(sorted(fleet.config.clusters)) if fleet.config else ""
        print(f"unknown cluster {args.cluster!r} in {directory} (known: {known})", file=sys.stderr)
        return 2
    lookup, body = results[args.cluster]
    refresh = lookup.value
    success = refresh is not None and refresh.ok
    duration = time.monotonic() - started
    head = head_families(success, duration, args.timeout, refresh)
    sys.stdout.buffer.write(encode(head, args.cluster, eof=False) + body)
    if args.debug or not success:
        print(
            probe_log(
                args.cluster,
                started_at,
                args.timeout,
                None,
                lookup.source,
                refresh,
                success,
                duration,
            ),
            file=sys.stderr,
            end="",
        )
    return 0 if success else 1


def cmd_check(args: argparse.Namespace) -> int:
    from .longhorn.health import summarize

    directory = Path(args.clusters)
    fleet, results = asyncio.run(_one_shot(directory, None, args.timeout))
    failed = 0
    width = max((len(n) for n in results), default=10)
    for name, (lookup, _body) in results.items():
        refresh = lookup.value
        if refresh is not None and refresh.ok and refresh.state is not None:
            s = summarize(refresh.state)
            line = (
                f"ok    {name:<{width}}  {s.volumes} volumes, {s.nodes} nodes, "
                f"Longhorn {s.longhorn_version or 'version unknown'}, {refresh.duration:.2f}s"
            )
            if refresh.error:
                line += f" ({refresh.error})"
        else:
            failed += 1
            reason = refresh.error if refresh else f"no answer within {args.timeout:g}s"
            line = f"FAIL  {name:<{width}}  {reason}"
        print(line)
    rejected = fleet.config.rejected if fleet.config else {}
    for what, why in rejected.items():
        failed += 1
        print(f"FAIL  {what:<{width}}  {why.message}")
    for what, why in (fleet.config.ignored if fleet.config else {}).items():
        print(f"skip  {what:<{width}}  {why.message}")
    if not results and not rejected:
        print(f"no clusters in {directory}: it holds no kubeconfig (see the README, Clusters)")
        return 1
    print(f"{len(results) - failed + len(rejected)}/{len(results) + len(rejected)} clusters ok")
    return 1 if failed else 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, in words: ``(default: off)`` for a
    switch, ``(default: none)`` where there is none; a help that says its default already
    is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default
        if action.default is None:
            return text + " (default: none)"
        if action.default is False and action.nargs == 0:
            return text + " (default: off)"
        return text + " (default: %(default)s)"


LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["logfmt", "json"]


def _log_flags(p: argparse.ArgumentParser, default: bool) -> None:
    """``--log.level`` and ``--log.format``: on the main parser with their defaults, and
    on every subcommand without (SUPPRESS), so they are accepted after it too and only
    override what was given before."""
    for flag, dest, value, choices, what in (
        (
            "--log.level",
            "log_level",
            "info",
            LOG_LEVELS,
            "what to log: debug, info, warning or error",
        ),
        ("--log.format", "log_format", "logfmt", LOG_FORMATS, "log lines as logfmt or json"),
    ):
        p.add_argument(
            flag,
            dest=dest,
            default=value if default else argparse.SUPPRESS,
            choices=choices,
            help=what
            if default
            else f"{what} (default: {value}, or as given before the subcommand)",
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-exporter",
        description="Prometheus probe exporter for Longhorn across many Kubernetes clusters.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _log_flags(p, default=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _log_flags(common, default=False)
    kwargs = {"parents": [common], "formatter_class": HelpFormatter}

    def clusters_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--clusters",
            default=os.environ.get("FLEET_EXPORTER_CLUSTERS", "clusters"),
            metavar="DIR",
            help="directory of kubeconfigs (one per cluster) and fleet.yaml; "
            "$FLEET_EXPORTER_CLUSTERS sets the default",
        )

    def timeout_arg(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help=what)

    serve = sub.add_parser(
        "serve",
        help="serve /probe, /metrics, /targets and the pages",
        description="Serve /probe for Prometheus, the exporter's own /metrics, /targets "
        "for HTTP service discovery, and the pages.",
        **kwargs,
    )
    clusters_arg(serve)
    serve.add_argument(
        "--listen",
        type=parse_listen,
        default=f":{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="where to listen: HOST:PORT, [IPv6]:PORT, or :PORT for all interfaces",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM",
    )
    serve.add_argument(
        "--config.watch-interval",
        dest="watch_interval",
        type=parse_interval,
        default=f"{DEFAULT_INTERVAL:g}s",
        metavar="DURATION",
        help="check the clusters directory for changes this often and reload, as SIGHUP "
        "does; 0 turns the watch off",
    )
    serve.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config: TLS, client certificates, basic auth, rate "
        "limit (re-read when it changes) (default: none: plain HTTP, no authentication)",
    )
    serve.add_argument(
        "--web.enable-lifecycle",
        dest="web_enable_lifecycle",
        action="store_true",
        help="let POST /-/reload reload the clusters directory (SIGHUP always does)",
    )
    serve.set_defaults(func=cmd_serve)

    probe = sub.add_parser(
        "probe",
        help="probe one cluster and print its metrics",
        description="Probe one cluster once, as /probe would, and print its metrics; what "
        "the probe did goes to stderr with --debug or when it fails.",
        **kwargs,
    )
    probe.add_argument("cluster", help="the cluster's name (its kubeconfig's file name)")
    clusters_arg(probe)
    timeout_arg(probe, "how long the probe may take, as a scrape timeout would allow")
    probe.add_argument(
        "--debug", action="store_true", help="also print what the probe did, to stderr"
    )
    probe.set_defaults(func=cmd_probe)

    check = sub.add_parser(
        "check",
        help="try every cluster once; one line per cluster",
        description="Try every cluster of the clusters directory once, concurrently, and "
        "print one line per cluster; exit status 1 when any fails.",
        **kwargs,
    )
    clusters_arg(check)
    timeout_arg(check, "how long each cluster may take")
    check.set_defaults(func=cmd_check)

    add_triage(sub, **kwargs)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
