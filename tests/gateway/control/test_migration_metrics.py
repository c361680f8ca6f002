"""A migration counts in ``lorafleet_migrations_total{outcome="ok"}`` only when it moves
adapters, and each adapter it moves in ``lorafleet_adapters_moved_total``: a re-plan that
keeps everything where it is (most periodic ones) is no migration."""

from __future__ import annotations

from pathlib import Path

from gateway.control.migrate import execute
from gateway.server.keys import CONTROL, FLEET, GATEWAY_METRICS
from planner.migration import Migration, Step, StepKind
from tests.gateway.server.factories import Stack, demands, gateway_stack


def counts(stack: Stack) -> tuple[float, float]:
    """(ok migrations, adapters moved) so far."""
    registry = stack.app[GATEWAY_METRICS].registry
    ok = registry.get_sample_value("lorafleet_migrations_total", {"outcome": "ok"})
    moved = registry.get_sample_value("lorafleet_adapters_moved_total")
    assert ok is not None and moved is not None
    return ok, moved


def migration(shares: dict[str, dict[str, float]]) -> Migration:
    """A migration to ``shares`` (``execute`` works from them and routes once)."""
    return Migration(shares=shares, steps=(Step(StepKind.ROUTE, ""),), moved=(), retired=(),
                     added=())


async def test_only_migrations_that_move_adapters_count(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("a", "b", "c"), workers=2, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        assert fleet.holding() == {"w0": {"a", "c"}, "w1": {"b"}}
        assert counts(stack) == (0, 0)

        # the same placement, rates re-split: routed anew, nothing moves, nothing counted
        same = await execute(stack.app[CONTROL], migration({"w0": {"a": 1.0, "c": 0.5},
                                                   "w1": {"b": 1.0}}))
        assert same.outcome.value == "ok" and same.moved == ()
        assert counts(stack) == (0, 0)

        # c moves to w1 and a is replicated there: one migration, two adapters moved
        moved = await execute(stack.app[CONTROL], migration({"w0": {"a": 0.5},
                                                    "w1": {"a": 0.5, "b": 1.0, "c": 1.0}}))
        await stack.app[CONTROL].releases.settled()
        assert moved.moved == ("a", "c")
        assert fleet.holding() == {"w0": {"a"}, "w1": {"a", "b", "c"}}
        assert counts(stack) == (1, 2)

        # a plan for a worker that does not run, folded back where everything already is
        folded = await execute(stack.app[CONTROL], migration({"w0": {"a": 0.5},
                                                     "w1": {"a": 0.5, "b": 1.0, "c": 1.0},
                                                     "new-2": {}}))
        assert folded.moved == () and counts(stack) == (1, 2)
