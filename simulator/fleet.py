"""Cluster specifications for the simulated fleet, and the stock fleets built from them.

A `ClusterSpec` says what one simulated cluster looks like (size, Longhorn version, health
problems, auth mode, injected faults); `objects.build_cluster` turns it into Longhorn objects
and `server.SimulatedFleet` serves them. The stock fleets give the demo something varied to
show (`demo_fleet`), the benchmark a realistic long tail (`sized_fleet`), and scale tests many
small clusters (`small_fleet`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

# Faults the server can inject, by name. HTTP status faults answer with kube-apiserver's
# `Status` JSON; the others misbehave at the transport or body level (see server.py).
HTTP_FAULTS = frozenset({"401", "403", "404", "429", "500", "503"})
BEHAVIOUR_FAULTS = frozenset(
    {
        "timeout",
        "slow_drip",
        "truncated",
        "invalid_json",
        "wrong_content_type",
        "oversized",
        "gzip_bomb",
        "truncated_gzip",
        "unknown_encoding",
        "reset",
        "endless_continue",
        "expired_continue",
        "throttle",
        "redirect",
    }
)
FAULTS = HTTP_FAULTS | BEHAVIOUR_FAULTS

# Key meaning "every resource of the cluster" in `ClusterSpec.faults`.
ALL_RESOURCES = "*"

AUTH_MODES = ("token", "cert")

# Cluster names become URL path segments and file names, so keep them DNS-label shaped.
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")

# Health knobs that take a count of volumes (an int) or a fraction of them (a float < 1).
# Each group applies to disjoint sets of volumes; the values name the resulting situation.
STATE_KNOBS = {
    "faulted_volumes": "faulted",
    "degraded_volumes": "degraded",
    "detached_volumes": "detached",
    "unscheduled_volumes": "unscheduled",
    "detached_failed_volumes": "detached_failed",
    "unscheduled_extra_volumes": "unscheduled_extra",
}
BACKUP_KNOBS = {
    "never_backed_up_volumes": "never",
    "failing_backups": "failing",
    "stuck_backups": "stuck",
    "pending_backups": "pending",
    "overdue_backups": "overdue",
    "recovered_backups": "recovered",
}
# Knobs that mark volumes whatever their state (`read_only_volumes` only attached, healthy
# ones: a filesystem is mounted only there).
FLAG_KNOBS = ("too_many_snapshots_volumes", "read_only_volumes", "near_capacity_volumes")
VOLUME_KNOBS = (*STATE_KNOBS, *BACKUP_KNOBS, *FLAG_KNOBS)
_INT_FIELDS = (
    "volumes",
    "replicas_per_volume",
    "snapshots_per_volume",
    "backups_per_volume",
    "nodes",
    "disks_per_node",
    "seed",
    "nodes_down",
    "disks_under_pressure",
)


def normalize_fault(fault: str | int) -> str:
    """Return the canonical name of `fault` ("403", "timeout", ...), or raise ValueError."""
    name = str(fault).strip().lower()
    if name not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(sorted(FAULTS))}")
    return name


def parse_version(version: str) -> tuple[int, int, int]:
    """Parse a Longhorn version such as "v1.10.1" into (1, 10, 1), or raise ValueError."""
    match = _VERSION_RE.match(version)
    if not match:
        raise ValueError(f"longhorn_version {version!r} is not like 'v1.10.1'")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass
class ClusterSpec:
    """What one simulated cluster looks like. Defaults describe a small healthy cluster.

    Volume health knobs (`VOLUME_KNOBS`) take a count (int) or a fraction of the volumes
    (float below 1). The volume states (`STATE_KNOBS`) are exclusive; the backup knobs
    apply to disjoint sets of volumes too. Replicas of attached volumes on a down node fail
    (`failedAt` set, state `unknown`), so those volumes end up degraded as well:
    `ClusterObjects.summary` has the exact resulting counts.
    """

    name: str
    volumes: int = 20
    replicas_per_volume: int = 3
    snapshots_per_volume: int = 4
    backups_per_volume: int = 3
    nodes: int = 3
    disks_per_node: int = 1
    longhorn_version: str = "v1.10.1"
    latency_seconds: float = 0.0
    seed: int = 0
    auth: str = "token"
    namespace: str = "longhorn-system"
    # Volume health (counts or fractions, see above).
    degraded_volumes: int | float = 0
    faulted_volumes: int | float = 0
    detached_volumes: int | float = 0
    unscheduled_volumes: int | float = 0
    # Detached after a replica failed, never rebuilt: robustness `unknown`, too few usable
    # replicas to come up healthy.
    detached_failed_volumes: int | float = 0
    # Every replica healthy plus one more, asked for by replica auto-balance, that cannot be
    # scheduled: Scheduled False, robustness healthy (Longhorn counts RW replicas against
    # numberOfReplicas; longhorn/longhorn#11916).
    unscheduled_extra_volumes: int | float = 0
    too_many_snapshots_volumes: int | float = 0
    # The active engine reports FilesystemReadOnly True (attached, healthy volumes).
    read_only_volumes: int | float = 0
    # status.actualSize 93-108 % of spec.size (the others stay at or below 90 %).
    near_capacity_volumes: int | float = 0
    # Backups: newest backup Error / InProgress for 7-20 hours / just created ("" or Pending) /
    # last success days ago / no backup at all / the run before the newest failed and the
    # newest completed. The daily backup job runs at the hour 30-90 minutes before `now`, so
    # a volume whose newest backup failed or is still running has its last success within
    # 23.5-25.5 hours (uploads take up to an hour), whatever the time of day.
    failing_backups: int | float = 0
    stuck_backups: int | float = 0
    pending_backups: int | float = 0
    overdue_backups: int | float = 0
    never_backed_up_volumes: int | float = 0
    recovered_backups: int | float = 0
    backup_target_available: bool = True
    # Nodes and disks (counts).
    nodes_down: int = 0
    disks_under_pressure: int = 0
    # Test knobs: names with quotes/backslashes/newlines/HTML/non-ASCII, and extra objects
    # with wrong-typed fields.
    hostile_names: bool = False
    malformed: bool = False
    # Transport: an unreachable cluster's kubeconfig points at a closed port.
    unreachable: bool = False
    tls_server_name: str = ""
    # Lists written with `metadata` before `items` (kube-apiserver sorts the keys, so
    # `metadata` comes last; a proxy that re-encodes the JSON may not).
    metadata_first: bool = False
    # Faults injected from the start: resource plural (or "*") -> fault name or HTTP status.
    faults: dict[str, str | int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"cluster name {self.name!r} must be lowercase letters, digits and '-' "
                "(a DNS label, at most 63 characters)"
            )
        for field_name in _INT_FIELDS:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: {field_name} must be an int >= 0, got {value!r}")
        for knob in VOLUME_KNOBS:
            self._check_knob(knob, getattr(self, knob))
        if self.nodes < 1 or self.disks_per_node < 1:
            raise ValueError(f"{self.name}: nodes and disks_per_node must be at least 1")
        if self.replicas_per_volume < 1:
            raise ValueError(f"{self.name}: replicas_per_volume must be at least 1")
        if self.nodes_down > self.nodes:
            raise ValueError(f"{self.name}: nodes_down ({self.nodes_down}) > nodes")
        if self.disks_under_pressure > self.nodes * self.disks_per_node:
            raise ValueError(f"{self.name}: disks_under_pressure exceeds the number of disks")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"{self.name}: auth must be one of {AUTH_MODES}, got {self.auth!r}")
        latency = self.latency_seconds
        if isinstance(latency, bool) or not isinstance(latency, int | float):
            raise ValueError(f"{self.name}: latency_seconds must be a number, got {latency!r}")
        if not 0 <= latency < 3600:
            raise ValueError(f"{self.name}: latency_seconds must be in [0, 3600)")
        parse_version(self.longhorn_version)
        self.faults = {str(k): normalize_fault(v) for k, v in self.faults.items()}
        for group in (STATE_KNOBS, BACKUP_KNOBS):
            total = sum(self.count(knob) for knob in group)
            if total > self.volumes:
                raise ValueError(
                    f"{self.name}: {' + '.join(group)} cover {total} volumes, "
                    f"more than the {self.volumes} there are"
                )
        healthy = self.volumes - sum(self.count(knob) for knob in STATE_KNOBS)
        if self.count("read_only_volumes") > healthy:
            raise ValueError(
                f"{self.name}: read_only_volumes ({self.count('read_only_volumes')}) exceeds "
                f"the {healthy} volumes no state knob takes"
            )

    def _check_knob(self, knob: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: {knob} must be a count or a fraction, got {value!r}")
        if isinstance(value, float) and not 0 <= value < 1:
            raise ValueError(f"{self.name}: {knob} as a fraction must be in [0, 1), got {value}")
        if value < 0 or (isinstance(value, int) and value > self.volumes):
            raise ValueError(f"{self.name}: {knob}={value} is outside 0..{self.volumes}")

    def count(self, knob: str) -> int:
        """The number of volumes a volume knob stands for (fractions round to nearest)."""
        value = getattr(self, knob)
        if isinstance(value, float):
            return round(value * self.volumes)
        return int(value)

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_version(self.longhorn_version)


# Region/environment names give realistic cluster names such as "eu-west-prod-01".
_REGIONS = (
    "eu-west",
    "eu-central",
    "eu-north",
    "us-east",
    "us-west",
    "us-central",
    "ap-south",
    "ap-northeast",
    "ap-southeast",
    "sa-east",
    "ca-central",
    "af-south",
    "me-central",
)
_ENVS = ("prod", "prod", "prod", "staging", "dev", "edge")
_VERSIONS = ("v1.10.1", "v1.10.1", "v1.10.2", "v1.9.2", "v1.11.1", "v1.12.1", "v1.8.2")


def _names(n: int, rng: random.Random) -> list[str]:
    """`n` distinct names like "eu-west-prod-01", numbered per region and environment."""
    seen: dict[str, int] = {}
    names = []
    for _ in range(n):
        prefix = f"{rng.choice(_REGIONS)}-{rng.choice(_ENVS)}"
        seen[prefix] = seen.get(prefix, 0) + 1
        names.append(f"{prefix}-{seen[prefix]:02d}")
    return names


def demo_fleet(n: int = 51, seed: int = 1) -> list[ClusterSpec]:
    """A varied fleet for the demo: mostly small healthy clusters plus a long tail and
    one or two of each problem a dashboard should show.

    With n >= 15 it contains: degraded volumes, a faulted volume, failing, stuck and overdue
    backups, never-backed-up volumes, a down node, disks under pressure, an unavailable
    backup target, a cluster whose RBAC forbids `snapshots` (403), one using client
    certificates, one with hostile names and malformed objects, one whose kubeconfig sets
    `tls-server-name`, one whose API server is unreachable, read-only filesystems, volumes
    near their capacity, a detached volume with a failed replica, a replica that cannot be
    scheduled beside healthy ones, and a failed backup that a later one made good.
    """
    if n < 1:
        raise ValueError("demo_fleet needs n >= 1")
    rng = random.Random(f"demo:{seed}")
    specs = []
    for i, name in enumerate(_names(n, rng)):
        big = i % 17 == 5  # a few clusters in the long tail
        volumes = rng.randint(200, 800) if big else rng.randint(5, 60)
        nodes = max(3, min(40, volumes // 15)) if big else rng.randint(3, 6)
        specs.append(
            ClusterSpec(
                name=name,
                volumes=volumes,
                nodes=nodes,
                disks_per_node=rng.choice((1, 1, 1, 2)),
                snapshots_per_volume=rng.randint(2, 8),
                backups_per_volume=rng.randint(2, 7),
                longhorn_version=rng.choice(_VERSIONS),
                seed=seed * 1000 + i,
                latency_seconds=round(rng.uniform(0.0, 0.03), 3),
            )
        )
    problems = [
        {"degraded_volumes": 2, "stuck_backups": 1},
        {"faulted_volumes": 1, "degraded_volumes": 1},
        {"failing_backups": 3, "never_backed_up_volumes": 2},
        {"nodes_down": 1},
        {"backup_target_available": False, "failing_backups": 2},
        {"faults": {"snapshots": 403}},
        {"unreachable": True},
        {"overdue_backups": 4, "pending_backups": 1, "detached_volumes": 2},
        {"disks_under_pressure": 1, "unscheduled_volumes": 1},
        {"too_many_snapshots_volumes": 2, "auth": "cert"},
        {"hostile_names": True, "malformed": True},
        {"tls_server_name": "kubernetes.default.svc"},
        {"auth": "cert", "degraded_volumes": 1},
        {"read_only_volumes": 1, "near_capacity_volumes": 2, "recovered_backups": 2},
        {"detached_failed_volumes": 1, "unscheduled_extra_volumes": 1},
    ]
    # Spread the problems over the fleet, away from index 0 so the first cluster is healthy.
    slots = list(range(1, n)) or [0]
    rng.shuffle(slots)
    for problem, i in zip(problems, slots, strict=False):
        specs[i] = replace(specs[i], **problem, volumes=max(specs[i].volumes, 12))
    return specs


def sized_fleet(
    n: int = 51,
    max_volumes: int = 2000,
    replicas: int = 3,
    snapshots: int = 20,
    backups: int = 10,
    seed: int = 2,
) -> list[ClusterSpec]:
    """A benchmark fleet: `n` healthy-ish clusters whose sizes follow a long tail from
    `max_volumes` down to a few volumes (sizes ~ max_volumes / rank**1.3)."""
    if n < 1 or max_volumes < 1:
        raise ValueError("sized_fleet needs n >= 1 and max_volumes >= 1")
    rng = random.Random(f"sized:{seed}")
    specs = []
    for rank, name in enumerate(_names(n, rng), start=1):
        volumes = max(5, int(max_volumes / rank**1.3))
        specs.append(
            ClusterSpec(
                name=name,
                volumes=volumes,
                replicas_per_volume=replicas,
                snapshots_per_volume=snapshots,
                backups_per_volume=backups,
                nodes=max(3, min(60, volumes // 30)),
                disks_per_node=2,
                longhorn_version=rng.choice(_VERSIONS),
                seed=seed * 100_000 + rank,
                degraded_volumes=0.01,
                failing_backups=0.01,
            )
        )
    return specs


def small_fleet(n: int = 500, seed: int = 3) -> list[ClusterSpec]:
    """Many small clusters (5-20 volumes each) for fan-out and scale tests."""
    if n < 1:
        raise ValueError("small_fleet needs n >= 1")
    rng = random.Random(f"small:{seed}")
    return [
        ClusterSpec(
            name=name,
            volumes=rng.randint(5, 20),
            nodes=3,
            longhorn_version=rng.choice(_VERSIONS),
            seed=seed * 100_000 + i,
        )
        for i, name in enumerate(_names(n, rng))
    ]


FLEETS = {"demo": demo_fleet, "sized": sized_fleet, "small500": small_fleet}
