"""How `connect()` turns its target into one gRPC channel target."""

from __future__ import annotations

import json

import pytest

from blackboard_client._targets import CHANNEL_OPTIONS, channel_target, split


def test_one_target_is_left_to_grpc() -> None:
    assert channel_target("10.0.0.1:50051") == "10.0.0.1:50051"
    assert channel_target("dns:///bb.internal:50051") == "dns:///bb.internal:50051"
    assert channel_target(["h:1"]) == "h:1"


def test_a_list_or_a_comma_string_becomes_an_address_list() -> None:
    expected = "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target(["10.0.0.1:1", "10.0.0.2:2"]) == expected
    assert channel_target(" 10.0.0.1:1 , 10.0.0.2:2 ,") == expected
    assert channel_target("[::1]:1,[::2]:2") == "ipv6:[::1]:1,[::2]:2"
    assert channel_target("10.0.0.1:1,10.0.0.1:1,10.0.0.2:2") == expected  # no repeats


def test_names_in_a_list_are_resolved_once() -> None:
    target = channel_target(["localhost:5", "127.0.0.1:6"])
    assert target.startswith(("ipv4:", "ipv6:")) and target.endswith(":6")
    assert ":5" in target


@pytest.mark.parametrize(
    "bad",
    ["", " , ", "10.0.0.1:1,nohostport", "10.0.0.1:1,dns:///x:1", "10.0.0.1:1,[::1]:2"],
)
def test_bad_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        channel_target(bad)


def test_split_keeps_order() -> None:
    assert split(["b:1", "a:2"]) == ["b:1", "a:2"]


def test_the_channel_spreads_calls_round_robin() -> None:
    config = json.loads(dict(CHANNEL_OPTIONS)["grpc.service_config"])
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
