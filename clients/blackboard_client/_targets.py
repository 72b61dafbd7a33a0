"""Where the client connects: one server, several replicas, or a DNS name.

    connect("10.0.0.1:50051")                        one server
    connect(["10.0.0.1:50051", "10.0.0.2:50051"])    replicas (or "a:1,b:2")
    connect("dns:///blackboard.internal:50051")      every address of a name

Every form makes one gRPC channel with the `round_robin` policy: the channel
keeps a connection to every address, spreads calls over those that are up,
and stops using one the moment its connection breaks. So when a replica dies
or drains, the retry of a failed call (same request id: applied once) and the
next attempt of a broken subscription go to a live replica with no wait for
a reconnect. `pick_first` would send everything to one replica, and have to
connect to another only after that one failed.

A list of names is resolved once, here, to its addresses; a DNS name given as
`dns:///` is resolved by gRPC and re-resolved when connections break, so it
follows a name whose addresses change.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

Target = str | Sequence[str]

SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
CHANNEL_OPTIONS = (
    ("grpc.service_config", SERVICE_CONFIG),
    # A replica that went away is tried again soon after it returns.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def split(target: Target) -> list[str]:
    """The targets in `target`: a list, or one string with commas."""
    items = target.split(",") if isinstance(target, str) else list(target)
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise ValueError("connect: no target given")
    return targets


def _host_port(target: str) -> tuple[str, str]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"connect: expected HOST:PORT, got {target!r}")
    return host.strip("[]"), port


def _addresses(host: str, port: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
    else:
        hosts = [host]
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]


def channel_target(target: Target) -> str:
    """The gRPC target for `target`; several servers become one `ipv4:`/`ipv6:` list."""
    targets = split(target)
    if len(targets) == 1:
        return targets[0]  # gRPC resolves it, including dns:/// with several addresses
    addresses: list[str] = []
    for t in targets:
        if "://" in t or t.startswith(("ipv4:", "ipv6:", "unix:")):
            raise ValueError(f"connect: a list takes HOST:PORT items, got {t!r}")
        addresses += _addresses(*_host_port(t))
    v6 = [a.startswith("[") for a in addresses]
    if any(v6) and not all(v6):
        raise ValueError("connect: a list of targets must be all IPv4 or all IPv6")
    return ("ipv6:" if all(v6) else "ipv4:") + ",".join(dict.fromkeys(addresses))
