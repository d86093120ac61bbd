"""The I/O-free routing table (``gateway.routing``): default versions, replacing, leaving."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.errors import NotFound
from gateway.routing import RoutingTable


@dataclass(eq=False)
class Server:
    """A server as the table sees it: whether a copy is ready, and the versions it is told."""

    label: str
    ready: bool = False
    versions: tuple[str, ...] = ()


def table(**versions: Server) -> tuple[RoutingTable[Server], list[int]]:
    changes = [0]

    def changed() -> None:
        changes[0] += 1

    routing: RoutingTable[Server] = RoutingTable(on_change=changed)
    for version, server in versions.items():
        routing.route(("m", version.lstrip("v")), server)
    return routing, changes


class TestResolve:
    def test_unknown_model_is_none_and_unknown_version_is_not_found(self) -> None:
        routing, _ = table(v1=Server("a"))
        assert routing.resolve("other", None) is None
        with pytest.raises(NotFound, match="version 7"):
            routing.resolve("m", "7")

    def test_named_version(self) -> None:
        a, b = Server("a"), Server("b")
        routing, _ = table(v1=a, v2=b)
        assert routing.resolve("m", "1") is a

    def test_one_version_is_the_default_even_while_loading(self) -> None:
        a = Server("a")
        routing, _ = table(v3=a)
        assert routing.resolve("m", None) is a

    def test_default_is_the_latest_ready_version(self) -> None:
        v1, v2, v10 = Server("1", ready=True), Server("2", ready=True), Server("10")
        routing, _ = table(v1=v1, v2=v2, v10=v10)
        assert routing.resolve("m", None) is v2  # 10 is newer (numerically) but loading
        v10.ready = True
        assert routing.resolve("m", None) is v10

    def test_pinned_default_wins_over_the_latest(self) -> None:
        v1, v2 = Server("1", ready=True), Server("2", ready=True)
        routing, _ = table(v1=v1, v2=v2)
        assert routing.resolve("m", None, pinned="1") is v1
        assert routing.resolve("m", None, pinned="9") is v2  # not routed: ignored

    def test_leaving_version_is_not_the_default_while_another_is_ready(self) -> None:
        v1, v2 = Server("1", ready=True), Server("2", ready=True)
        routing, _ = table(v1=v1, v2=v2)
        assert routing.leave(("m", "2"))
        assert routing.resolve("m", None) is v1
        assert routing.resolve("m", "2") is v2  # still served when named


class TestRouting:
    def test_versions_are_numeric_and_every_server_is_told(self) -> None:
        v2, v10 = Server("2"), Server("10")
        routing, changes = table(v10=v10, v2=v2)
        assert routing.versions_of("m") == ["2", "10"]
        assert v2.versions == v10.versions == ("2", "10")
        assert changes[0] == 2
        assert routing.unroute(("m", "2")) is v2
        assert v10.versions == ("10",)
        assert routing.versions_of("m") == ["10"]
        assert routing.unroute(("m", "10")) is v10
        assert routing.resolve("m", None) is None and routing.versions("m") == {}

    def test_drop_model_returns_routed_and_starting_servers(self) -> None:
        old, new, other = Server("old", ready=True), Server("new"), Server("other")
        routing, _ = table(v1=old)
        routing.route(("n", "1"), other)
        routing.start_replacement(("m", "1"), new)
        dropped = routing.drop_model("m")
        assert set(map(id, dropped)) == {id(old), id(new)}
        assert routing.settled and routing.resolve("m", None) is None
        assert routing.running() == [other]


class TestReplacing:
    def test_the_old_server_serves_until_the_replacement_is_ready(self) -> None:
        old, new = Server("old", ready=True), Server("new")
        routing, _ = table(v1=old)
        assert routing.start_replacement(("m", "1"), new) is None
        assert routing.is_replacement(new) and not routing.settled
        assert routing.switch_ready() == []
        assert routing.resolve("m", "1") is old
        new.ready = True
        assert routing.switch_ready() == [(("m", "1"), old)]
        assert routing.resolve("m", "1") is new and routing.settled

    def test_a_newer_replacement_supersedes_the_starting_one(self) -> None:
        routing, _ = table(v1=Server("old", ready=True))
        first, second = Server("first"), Server("second")
        routing.start_replacement(("m", "1"), first)
        assert routing.start_replacement(("m", "1"), second) is first
        assert routing.running()[-1] is second and not routing.is_replacement(first)

    def test_changed_back_cancels_the_replacement(self) -> None:
        old, new = Server("old", ready=True), Server("new")
        routing, _ = table(v1=old)
        routing.start_replacement(("m", "1"), new)
        assert routing.cancel_replacement(("m", "1")) is new
        new.ready = True
        assert routing.switch_ready() == [] and routing.resolve("m", "1") is old


class TestLeaving:
    def test_a_dropped_version_serves_until_another_version_is_ready(self) -> None:
        v1, v2 = Server("1", ready=True), Server("2")
        routing, _ = table(v1=v1, v2=v2)
        assert routing.leave(("m", "1"))
        assert not routing.leave(("m", "1"))  # told once
        assert routing.leaving_versions("m") == ["1"]
        assert routing.settle_leaving() == []
        assert routing.resolve("m", None) is v1  # the only ready one
        v2.ready = True
        assert routing.settle_leaving() == [(("m", "1"), v1)]
        assert routing.versions_of("m") == ["2"] and routing.settled

    def test_declared_again_it_stays(self) -> None:
        routing, _ = table(v1=Server("1", ready=True), v2=Server("2", ready=True))
        routing.leave(("m", "1"))
        routing.keep(("m", "1"))
        assert routing.settle_leaving() == [] and routing.versions_of("m") == ["1", "2"]

    def test_an_unrouted_version_cannot_leave(self) -> None:
        routing, _ = table(v1=Server("1"))
        assert not routing.leave(("m", "5")) and routing.settled
