"""SSRF protection: non-public destinations are refused unless allowlisted, and the
connection goes to the address that was checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.actions import ActionRequest, Environment, perform
from conveyor.netguard import BlockedAddress, NetworkPolicy, is_public, pin
from tests.runner.helpers import LocalHTTP, local_http

BLOCKED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.100.100.200",  # Alibaba metadata (CGNAT range)
    "0.0.0.0",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "198.18.0.1",
    "192.0.0.170",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS IPv6 metadata
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::200e"]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_public(ip)
    assert not NetworkPolicy().permits(ip)
    with pytest.raises(BlockedAddress):
        NetworkPolicy().resolve(address, 80)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_permitted(address: str) -> None:
    assert NetworkPolicy().permits(ipaddress.ip_address(address))


def test_allowlisted_networks_are_permitted() -> None:
    policy = NetworkPolicy.parse("127.0.0.1/32, 10.0.0.0/8,fd00::/8")
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("10.20.30.40"))
    assert policy.permits(ipaddress.ip_address("fd00:ec2::254"))
    assert policy.permits(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.2"))
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"))


def test_a_malformed_allowlist_is_refused() -> None:
    with pytest.raises(ValueError, match="not a network"):
        NetworkPolicy.parse("127.0.0.1/32,localhost")


private_v4 = st.one_of(
    st.integers(0x0A000000, 0x0AFFFFFF),  # 10/8
    st.integers(0x7F000000, 0x7FFFFFFF),  # 127/8
    st.integers(0xAC100000, 0xAC1FFFFF),  # 172.16/12
    st.integers(0xC0A80000, 0xC0A8FFFF),  # 192.168/16
    st.integers(0xA9FE0000, 0xA9FEFFFF),  # 169.254/16
    st.integers(0x64400000, 0x647FFFFF),  # 100.64/10
    st.integers(0xE0000000, 0xFFFFFFFF),  # multicast, reserved, broadcast
).map(ipaddress.IPv4Address)


@given(private_v4)
def test_every_private_ipv4_address_is_refused_also_when_mapped_into_ipv6(
    address: ipaddress.IPv4Address,
) -> None:
    policy = NetworkPolicy()
    assert not policy.permits(address)
    assert not policy.permits(ipaddress.IPv6Address(f"::ffff:{address}"))
    assert not policy.permits(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address)))


@pytest.fixture
def server() -> Iterator[LocalHTTP]:
    with local_http() as s:
        yield s


def test_a_hostname_resolving_to_loopback_is_refused_when_not_allowlisted(server: LocalHTTP) -> None:
    env = Environment.create(NetworkPolicy())
    try:
        outcome = perform(
            ActionRequest("webhook.send", {"url": server.url("/x", host="localhost")}, "1:a:1", 5.0), env
        )
    finally:
        env.close()
    assert not outcome.ok and outcome.retryable is False
    assert outcome.error is not None and outcome.error["type"] == "blocked_address"
    assert "'localhost'" in outcome.error["message"] and "127.0.0.1" in outcome.error["message"]
    assert server.received == []  # nothing was sent


def test_loopback_literal_is_refused_when_not_allowlisted(server: LocalHTTP) -> None:
    env = Environment.create(NetworkPolicy())
    try:
        outcome = perform(ActionRequest("webhook.send", {"url": server.url("/x")}, "1:a:1", 5.0), env)
    finally:
        env.close()
    assert not outcome.ok and outcome.error is not None and outcome.error["type"] == "blocked_address"
    assert server.received == []


def test_the_request_goes_to_the_checked_address_with_the_original_host_header(server: LocalHTTP) -> None:
    policy = NetworkPolicy.parse("127.0.0.1/32,::1/128")
    target = pin(policy, server.url("/where?q=1", host="localhost"))
    # the connection goes to an address, never to the name again: no second DNS lookup can change it
    assert ipaddress.ip_address(target.address).is_loopback
    assert target.host_header == f"localhost:{server.port}"
    assert target.host == "localhost"  # the TLS server name
    assert target.path == "/where?q=1"
    if target.address == "127.0.0.1":
        env = Environment.create(policy)
        try:
            outcome = perform(
                ActionRequest(
                    "webhook.send",
                    {"url": server.url("/where?q=1", host="localhost"), "method": "GET"},
                    "k",
                    5.0,
                ),
                env,
            )
        finally:
            env.close()
        assert outcome.ok and outcome.output is not None, outcome.error
        echoed = outcome.output["body"]
        assert echoed["headers"]["host"] == f"localhost:{server.port}"
        assert echoed["path"] == "/where?q=1"


def test_the_host_header_names_the_port_only_when_it_is_not_the_default() -> None:
    policy = NetworkPolicy.parse("127.0.0.1/32")
    assert pin(policy, "http://127.0.0.1/a").host_header == "127.0.0.1"
    assert pin(policy, "http://127.0.0.1:80/a").host_header == "127.0.0.1"
    assert pin(policy, "https://127.0.0.1:8443/a").host_header == "127.0.0.1:8443"
    assert pin(policy, "http://127.0.0.1/a b?x=1 2#frag").path == "/a%20b?x=1%202"


def test_only_http_and_https_urls_with_a_host_are_allowed() -> None:
    for url in ("ftp://example.com/x", "file:///etc/passwd", "http:///nohost"):
        with pytest.raises(BlockedAddress):
            pin(NetworkPolicy(), url)


def test_allowlisted_localhost_is_reached() -> None:
    with local_http() as server:
        env = Environment.create(NetworkPolicy.parse("127.0.0.1/32,::1/128"))
        try:
            outcome = perform(
                ActionRequest("webhook.send", {"url": server.url("/ok", host="127.0.0.1")}, "1:a:1", 5.0), env
            )
        finally:
            env.close()
    assert outcome.ok, outcome.error
