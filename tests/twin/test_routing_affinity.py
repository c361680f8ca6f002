"""Prefix affinity in ``twin.routing.Router``: a prefix key keeps requests on one holder while
the load allows, spills under imbalance, follows the shares over many prefixes, and moves few
keys when holders change; without a key nothing changes."""

from __future__ import annotations

from collections import Counter

import pytest

from twin.routing import Placement, Router, RoutingPolicy, WorkerPlacement


def plan(*shares: dict[str, float]) -> Placement:
    return Placement(tuple(WorkerPlacement(name=f"w{i}", shares=s)
                           for i, s in enumerate(shares)))


EVEN3 = plan({"a": 1 / 3}, {"a": 1 / 3}, {"a": 1 / 3})


@pytest.mark.parametrize("policy", [RoutingPolicy.PLACEMENT, RoutingPolicy.LEAST_OUTSTANDING,
                                    RoutingPolicy.PREFER_LOADED])
def test_same_prefix_stays_on_one_holder_while_load_is_balanced(
        policy: RoutingPolicy) -> None:
    router = Router(EVEN3, policy)
    for key in ("system prompt A", "system prompt B", b"raw bytes", 12345):
        seen = set()
        for _ in range(20):
            index = router.route("a", prefix_key=key)
            seen.add(index)
            router.done(index)
        assert seen == {router.preferred(router.holders("a"), key)}
    if policy is not RoutingPolicy.PLACEMENT:
        return  # least outstanding with nothing in flight: always the first holder
    # without a key the same sequence spreads over the holders in their shares
    spread = set()
    for _ in range(6):
        index = router.route("a")
        spread.add(index)
        router.done(index)
    assert spread == {0, 1, 2}


def test_distinct_prefixes_are_spread_in_proportion_to_the_shares() -> None:
    router = Router(plan({"a": 0.6}, {"a": 0.3}, {"a": 0.1}), RoutingPolicy.PLACEMENT)
    counts = Counter(router.preferred(router.holders("a"), f"prompt {k}")
                     for k in range(6000))
    for index, share in ((0, 0.6), (1, 0.3), (2, 0.1)):
        assert counts[index] / 6000 == pytest.approx(share, abs=0.025)


def test_a_hot_prefix_spills_once_its_holder_runs_ahead() -> None:
    router = Router(EVEN3, RoutingPolicy.PLACEMENT)
    key = "the same long prefix"
    first = router.route("a", prefix_key=key)
    # nothing finishes: the preferred holder takes requests up to the slack (2) ahead
    assert [router.route("a", prefix_key=key) for _ in range(2)] == [first, first]
    assert router.outstanding[first] == 3
    spilled = router.route("a", prefix_key=key)
    assert spilled != first
    # spilled requests follow the policy; the outstanding counts stay within the slack
    for _ in range(60):
        router.route("a", prefix_key=key)
    assert max(router.outstanding) - min(router.outstanding) <= max(2, 0.25 * 20) + 1
    assert router.outstanding[first] == max(router.outstanding)


def test_slack_grows_with_the_load() -> None:
    router = Router(plan({"a": 0.5}, {"a": 0.5}), RoutingPolicy.LEAST_OUTSTANDING,
                    affinity_slack=2, affinity_ratio=0.25)
    key = "k"
    pref = router.preferred(router.holders("a"), key)
    other = 1 - pref
    router.outstanding = [0, 0]
    router.outstanding[other] = 40
    router.outstanding[pref] = 50  # 10 ahead of 40: within 25% of 40
    assert router.route("a", prefix_key=key) == pref
    router.outstanding[pref] = 51  # 11 ahead of 40: past it
    assert router.route("a", prefix_key=key) == other


def test_rendezvous_moves_only_the_keys_of_a_removed_or_added_holder() -> None:
    keys = [f"conversation {k}" for k in range(3000)]
    four = [(i, 0.25) for i in range(4)]
    router = Router(plan(*({"a": 0.25} for _ in range(4))), RoutingPolicy.PLACEMENT)
    before = {k: router.preferred(four, k) for k in keys}
    without_2 = {k: router.preferred([h for h in four if h[0] != 2], k) for k in keys}
    moved = [k for k in keys if before[k] != without_2[k]]
    assert moved and all(before[k] == 2 for k in moved)
    assert len(moved) == sum(1 for k in keys if before[k] == 2)
    five = [*four, (4, 0.25)]
    with_4 = {k: router.preferred(five, k) for k in keys}
    assert all(with_4[k] in (before[k], 4) for k in keys)
    assert 0.12 < sum(1 for k in keys if with_4[k] == 4) / len(keys) < 0.28


def test_the_key_is_ignored_with_one_holder_and_by_round_robin() -> None:
    router = Router(plan({"a": 1.0}, {"b": 1.0}), RoutingPolicy.PLACEMENT)
    assert {router.route("a", prefix_key=f"p{k}") for k in range(10)} == {0}
    rr = Router(EVEN3, RoutingPolicy.ROUND_ROBIN)
    assert [rr.route("a", prefix_key="same") for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_without_a_key_the_shares_are_followed_exactly() -> None:
    router = Router(plan({"a": 0.6}, {"a": 0.3}, {"a": 0.1}), RoutingPolicy.PLACEMENT)
    counts = Counter(router.route("a") for _ in range(1000))
    assert counts == {0: 600, 1: 300, 2: 100}
    # keyed requests in between do not disturb the weighted round-robin's proportions
    keyed = Router(plan({"a": 0.6}, {"a": 0.3}, {"a": 0.1}), RoutingPolicy.PLACEMENT)
    plain: Counter[int] = Counter()
    for k in range(1000):
        index = keyed.route("a", prefix_key=f"p{k % 7}")
        keyed.done(index)
        index = keyed.route("a")
        keyed.done(index)
        plain[index] += 1
    assert plain == {0: 600, 1: 300, 2: 100}
