"""Community ID v1 against the published test vectors (both directions give one ID)."""

from __future__ import annotations

import pytest

from dmfnet.flows.community_id import community_id, community_ids

# (protocol, source, source port, destination, destination port, seed, Community ID):
# the spec's example and baseline values (corelight/community-id-spec; the same vectors
# are in Zeek's and other implementations' tests).
VECTORS = [
    (6, "128.232.110.120", 34855, "66.35.250.204", 80, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "1.2.3.4", 1122, "5.6.7.8", 3344, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, "1.2.3.4", 1122, "5.6.7.8", 3344, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (6, "1.2.3.4", 1122, "5.6.7.8", 3344, 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, "1.2.3.4", 1122, "5.6.7.8", 3344, 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (17, "192.168.1.102", 68, "192.168.1.1", 67, 0, "1:aWZfLIquYlCxKGuJ62fQGlgFzAI="),
    (6, "192.168.1.102", 1180, "68.216.79.113", 37, 0, "1:9L/tZ1ebHzlWhzB/pJyS9AVJWy8="),
    (17, "fe80::2c23:b96c:78d:e116", 58544, "ff02::c", 3702, 0, "1:Zi9AdIwYvZnYvuObTPgGWCBSYRs="),
    (6, "fe80::219:e3ff:fee7:5d23", 5353, "ff02::fb", 53, 0, "1:A6qv/ihCkQJXov31L4YzlcuKR2k="),
]


@pytest.mark.parametrize(("proto", "src", "sport", "dst", "dport", "seed", "want"), VECTORS)
def test_published_vectors_in_both_directions(proto, src, sport, dst, dport, seed, want):
    assert community_id(proto, src, sport, dst, dport, seed) == want
    assert community_id(proto, dst, dport, src, sport, seed) == want


def test_same_address_orders_by_port_and_columns_match_single_flows():
    a = community_id(6, "10.0.0.1", 5000, "10.0.0.1", 80)
    assert a == community_id(6, "10.0.0.1", 80, "10.0.0.1", 5000)
    got = community_ids([6, 17], ["1.2.3.4", "5.6.7.8"], [1122, 3344], ["5.6.7.8", "1.2.3.4"],
                        [3344, 1122])  # fmt: skip
    assert got == ["1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="]


def test_undefined_here_is_empty():
    assert community_id(1, "1.2.3.4", 0, "5.6.7.8", 0) == ""  # ICMP: type/code not kept
    assert community_id(6, "h:0a1b2c", 1, "5.6.7.8", 2) == ""  # a hashed address
    assert community_id(6, "", 1, "", 2) == ""  # addresses dropped
    assert community_id(6, "1.2.3.4", 1, "::1", 2) == ""  # mixed families
