"""Property tests: duplicates and redeliveries never change the fold; ids are stable."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.cost import Budget, CostConfig, CostProcessor
from streams.processing import run_partitioned
from tests.test_runner import PRICES, calls

POOL = calls(40, tenants=("acme", "globex"))


def processor() -> CostProcessor:
    return CostProcessor(CostConfig(prices=PRICES, budgets=(Budget(name="b", scope="tenant", soft_usd=0.01),)))


@st.composite
def with_redeliveries(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """An input order (indices into POOL) and the same with duplicates and replays inserted."""
    base = draw(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=30, unique=True))
    noisy: list[int] = []
    for i, index in enumerate(base):
        noisy.append(index)
        # a redelivery of something already delivered (the event again, or a replayed run of them)
        if draw(st.booleans()):
            noisy.append(draw(st.sampled_from(base[: i + 1])))
        if draw(st.integers(0, 9)) == 0:
            start = draw(st.integers(0, i))
            noisy.extend(base[start : i + 1])
    return base, noisy


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_redeliveries())
def test_duplicates_fold_to_the_same_state_as_the_deduplicated_sequence(orders: tuple[list[int], list[int]]) -> None:
    base, noisy = orders
    clean_parts, clean = run_partitioned(processor(), [POOL[i] for i in base])
    noisy_parts, dirty = run_partitioned(processor(), [POOL[i] for i in noisy])
    p = processor()
    assert {k: p.snapshot(v.state) for k, v in noisy_parts.items()} == {
        k: p.snapshot(v.state) for k, v in clean_parts.items()
    }
    assert [e.id for e in dirty.decisions] == [e.id for e in clean.decisions]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=30))
def test_replaying_the_same_input_yields_identical_decisions(order: list[int]) -> None:
    events = [POOL[i] for i in order]
    _, first = run_partitioned(processor(), events)
    _, second = run_partitioned(processor(), events)
    assert [e.model_dump() for e in first.decisions] == [e.model_dump() for e in second.decisions]
