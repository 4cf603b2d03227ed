"""``inboxflow bench pipeline --rounds``: medians over rounds, paired ratios, alternating order."""

from __future__ import annotations

import pytest

from inboxflow.bench.peers import CeilingResult
from inboxflow.bench.pipeline import (
    PeerRatios,
    PipelineBenchResult,
    RoundRatios,
    SideFigures,
    median_ratios,
    median_side,
    round_order,
)


def side(name: str, rate: float, cpu: float = 0.5, pss: float = 100.0) -> SideFigures:
    return SideFigures(
        name=name,
        messages_per_second=rate,
        cpu_seconds_per_1000=cpu,
        main_cpu_seconds_per_1000=cpu / 2,
        cpu_seconds_total=cpu * 5,
        peak_rss_mib=pss * 1.5,
        main_peak_rss_mib=pss,
        peak_pss_mib=pss,
        first_output_seconds=1.0,
    )


def test_each_figure_is_its_median_over_the_rounds() -> None:
    rounds = [
        side("batched", 1000, 0.6, 80),
        side("batched", 3000, 0.4, 79),
        side("batched", 2000, 0.5, 81),
    ]

    median = median_side(rounds)

    assert median.name == "batched"
    assert median.messages_per_second == 2000
    assert median.cpu_seconds_per_1000 == 0.5
    assert median.peak_pss_mib == 80
    assert median_side(rounds[:1]) == rounds[0]


def test_an_even_count_of_rounds_takes_the_middle_of_the_two() -> None:
    assert median_side([side("quix", 1000), side("quix", 2000)]).messages_per_second == 1500


def test_ratios_are_the_median_of_each_rounds_own_ratio() -> None:
    def ratio(rate: float, cpu: float) -> PeerRatios:
        return PeerRatios(
            rate=rate, cpu_per_message=cpu, peak_rss=2.0, peak_pss=1.8, first_output=3
        )

    # Round 2 was a slow moment for both sides: its ratio still counts as one round's.
    median = median_ratios([ratio(1.3, 1.1), ratio(0.9, 1.3), ratio(1.2, 1.2)])

    assert median == PeerRatios(
        rate=1.2, cpu_per_message=1.2, peak_rss=2.0, peak_pss=1.8, first_output=3
    )


def test_the_order_flips_every_round() -> None:
    sides = ["inboxflow", "quix", "batched"]

    assert round_order(sides, 0) == sides
    assert round_order(sides, 1) == ["batched", "quix", "inboxflow"]
    assert round_order(sides, 2) == sides


def test_the_table_lists_every_rounds_ratios_under_the_medians() -> None:
    ours, peer = side("inboxflow", 3000), side("batched", 2000)
    per_round = [
        RoundRatios(1, "batched", 3000, 2000, 1.5, 1.1, 1.9),
        RoundRatios(2, "batched", 2600, 2000, 1.3, 1.2, 1.8),
    ]
    result = PipelineBenchResult(
        messages=5000,
        inboxflow_messages_per_second=3000,
        naive_messages_per_second=0,
        ratio=0,
        inboxflow_startup_seconds=1,
        inboxflow_peak_rss_mib=150,
        naive_peak_rss_mib=0,
        inboxflow=ours,
        peers={"batched": peer},
        ratios={
            "batched": median_ratios(
                [PeerRatios(1.5, 1.1, 2, 1.9, 3), PeerRatios(1.3, 1.2, 2, 1.8, 3)]
            )
        },
        ceiling=CeilingResult(5000, 4000, 0.25, 3500, 0.28),
        rounds=2,
        per_round=per_round,
    )

    lines = result.table()

    assert "  (medians of 2 rounds; each round's ratios below)" in lines
    assert any(line.startswith("  batched  rate 1.40x  CPU 1.15x") for line in lines)
    assert "  round 2 batched  rate 1.30x (2,600 / 2,000 msg/s)  CPU 1.20x  PSS 1.80x" in lines
    assert result.to_dict()["per_round"][1]["rate"] == 1.3


@pytest.mark.parametrize("rounds", [0, -1])
async def test_fewer_than_one_round_is_refused(rounds: int) -> None:
    from inboxflow.bench.pipeline import run_pipeline_bench
    from inboxflow.settings import Settings

    with pytest.raises(ValueError, match="rounds must be at least 1"):
        await run_pipeline_bench(Settings(), 10, ["batched"], rounds=rounds)
