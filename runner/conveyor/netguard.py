"""SSRF protection: outgoing connections only to public addresses, unless allowlisted.

A tenant's workflow chooses the URLs the runner calls, so the runner must not become
a way into the network it runs in (the cloud metadata service, the database, an
admin panel on localhost). For every outgoing connection the runner

1. resolves the host name once,
2. refuses if ANY resolved address is loopback, private, link-local, CGNAT, multicast,
   reserved, unspecified or otherwise not globally routable (IPv4 and IPv6, including
   IPv4-mapped and NAT64/6to4-embedded IPv4) and not inside an allowlisted network
   (`CONVEYOR_ALLOW_PRIVATE_NETWORKS=127.0.0.1/32,10.0.0.0/8`),
3. connects to the checked address itself, keeping the original name in the Host
   header and TLS SNI/certificate check, so a second DNS answer (DNS rebinding)
   cannot redirect the connection.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not always covered by ipaddress's is_private / is_global in every Python version.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (also Alibaba's metadata 100.100.100.200)
        "169.254.0.0/16",  # link-local, AWS/GCP/Azure metadata 169.254.169.254
        "192.0.0.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "fc00::/7",  # unique local (AWS IPv6 metadata fd00:ec2::254)
        "fe80::/10",
        "ff00::/8",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(Exception):
    """The destination resolves to an address the runner may not connect to (permanent)."""


class ResolveError(Exception):
    """The host name does not resolve (may be transient: retryable)."""


def parse_allowlist(text: str | None) -> tuple[IPNetwork, ...]:
    networks = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValueError(f"CONVEYOR_ALLOW_PRIVATE_NETWORKS: {part!r} is not a network") from exc
    return tuple(networks)


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True when `address` is globally routable (and so may be called without an allowlist)."""
    embedded = _embedded_v4(address)
    if embedded is not None and not is_public(embedded):
        return False
    if any(address in network for network in _EXTRA_BLOCKED if network.version == address.version):
        return False
    return bool(
        address.is_global
        and not (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )
    )


@dataclass(frozen=True)
class NetworkPolicy:
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls) -> NetworkPolicy:
        return cls(parse_allowlist(os.environ.get("CONVEYOR_ALLOW_PRIVATE_NETWORKS")))

    @classmethod
    def parse(cls, text: str | None) -> NetworkPolicy:
        return cls(parse_allowlist(text))

    def permits(self, address: IPAddress) -> bool:
        if any(address in n for n in self.allowed if n.version == address.version):
            return True
        embedded = _embedded_v4(address)
        if embedded is not None and any(embedded in n for n in self.allowed if n.version == 4):
            return True
        return is_public(address)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve once; every address must be permitted. Returns them in resolver order."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise ResolveError(f"cannot resolve {host!r}: {exc}") from exc
            addresses = []
            for info in infos:
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise ResolveError(f"cannot resolve {host!r}: no addresses")
        refused = [a for a in addresses if not self.permits(a)]
        if refused:
            raise BlockedAddress(
                f"refusing to connect to {host!r}: it resolves to a non-public address "
                f"({', '.join(map(str, refused))}); allow it with CONVEYOR_ALLOW_PRIVATE_NETWORKS"
            )
        return addresses


def connect_checked(policy: NetworkPolicy, host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to a checked address of `host` (tries each in turn)."""
    last: OSError | None = None
    for address in policy.resolve(host, port):
        try:
            return socket.create_connection((str(address), port), timeout=timeout)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


_PATH_SAFE = "/%:@!$&'()*+,;=~[]"
_QUERY_SAFE = _PATH_SAFE + "?"


@dataclass(frozen=True)
class Target:
    """Where a request to a URL goes: a checked address, and the names the server must see.

    `host` is the URL's host name (IDNA-encoded): the TLS server name (SNI and certificate
    check). `host_header` is the Host header (with the port when it is not the scheme's
    default). `address` is the checked address the connection goes to: it is never
    resolved again, so a second DNS answer (rebinding) cannot redirect the request.
    """

    scheme: str
    host: str
    host_header: str
    address: str
    port: int
    path: str

    @property
    def destination(self) -> tuple[str, str, str, int]:
        """What a kept-alive connection may be reused for: the same name at the same checked address."""
        return (self.scheme, self.host_header, self.address, self.port)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) a request to `url` goes to: the scheme and host in lower
    case, the host IDNA-encoded, the port explicit. `pin` connects to exactly this, so a
    check of a URL's origin is a check of where its request goes.

    Raises BlockedAddress (not http(s), no host) or ValueError (a malformed URL or port).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BlockedAddress(f"only http and https URLs are allowed, not {parts.scheme or 'none'!r}")
    host = parts.hostname
    if not host:
        raise BlockedAddress(f"the URL {url!r} has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"the host name {parts.hostname!r} is not a valid domain name") from exc
    return scheme, host, parts.port or DEFAULT_PORTS[scheme]


def pin(policy: NetworkPolicy, url: str) -> Target:
    """Check `url` and resolve its host once: the target to connect to.

    Raises BlockedAddress (not http(s), no host, a non-public address), ResolveError
    (the name does not resolve) or ValueError (a malformed URL).
    """
    parts = urlsplit(url)
    scheme, host, port = origin(url)
    default_port = DEFAULT_PORTS[scheme]
    address = policy.resolve(host, port)[0]
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path = f"{path}?{quote(parts.query, safe=_QUERY_SAFE)}"
    return Target(scheme, host, host_header, str(address), port, path)
