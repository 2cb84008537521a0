"""bench/stats.py: the one percentile, median, ratio and spread of the benchmark harness."""

from __future__ import annotations

import math
import random

import pytest
from stats import median, percentile, present, ratio, spread


def old_percentile(values: list[float], q: float) -> float | None:
    """The harness's percentile as it was (bench/run.py and bench/hsload.py, verbatim)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# -- percentile: nearest rank, no interpolation --------------------------------------------


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
    assert percentile([], 99) is None


def test_percentile_of_one_value_is_that_value_for_every_q() -> None:
    for q in (0, 1, 50, 99, 100):
        assert percentile([7.5], q) == 7.5


def test_percentile_odd_count() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 50) == 3.0  # rank ceil(2.5) = 3
    assert percentile(values, 99) == 5.0  # rank ceil(4.95) = 5
    assert percentile(values, 20) == 1.0  # rank ceil(1.0) = 1
    assert percentile(values, 21) == 2.0  # rank ceil(1.05) = 2
    assert values == [5.0, 1.0, 4.0, 2.0, 3.0]  # the input is not sorted in place


def test_percentile_even_count_picks_a_value_not_the_midpoint() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.0  # rank 2; an interpolating p50 would be 2.5
    assert percentile(values, 51) == 3.0  # rank ceil(2.04) = 3
    assert percentile(values, 99) == 4.0


def test_percentile_ends_clamp_to_min_and_max() -> None:
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 0) == 1.0  # rank ceil(0) - 1 = -1, clamped to the first
    assert percentile(values, 100) == 3.0
    assert percentile(values, 150) == 3.0  # out of range still gives the largest


def test_percentile_p50_p99_of_100_values() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0


def test_percentile_keeps_the_old_floating_point_rounding() -> None:
    # q / 100 * n, in that order: 7 / 100 * 100 is 7.000000000000001, so the old harness's
    # p7 of 100 values was the 8th, not the 7th (q * n / 100 would give the 7th). Kept.
    values = [float(i) for i in range(1, 101)]
    assert 7 / 100 * 100 > 7
    assert percentile(values, 7) == 8.0


def test_percentile_equals_the_old_definition_everywhere() -> None:
    rng = random.Random(1)
    for n in range(1, 60):
        values = [rng.uniform(0, 10) for _ in range(n)]
        for q in (0, 1, 5, 10, 25, 33, 50, 66, 75, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == old_percentile(values, q), (n, q)


def test_percentile_with_duplicates() -> None:
    assert percentile([2.0, 2.0, 2.0, 9.0], 50) == 2.0
    assert percentile([2.0, 2.0, 2.0, 9.0], 99) == 9.0


# -- median ------------------------------------------------------------------------------------


def test_median_of_nothing_is_none() -> None:
    assert median([]) is None
    assert median([None, None]) is None


def test_median_of_one_value() -> None:
    assert median([4.0]) == 4.0


def test_median_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5  # the mean of the middle two


def test_median_skips_none() -> None:
    assert median([None, 1.0, None, 3.0]) == 2.0
    assert median([None, 5.0]) == 5.0


def test_median_keeps_ints_ints_for_an_odd_count() -> None:
    # The results JSON writes 3, not 3.0: the type is part of "no change in the output".
    assert type(median([1, 3, 5])) is int
    assert median([1, 2]) == 1.5


def test_median_takes_any_iterable() -> None:
    assert median(x for x in (1.0, 9.0, 5.0)) == 5.0


# -- ratio -------------------------------------------------------------------------------------


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 2.0) == 0.0


@pytest.mark.parametrize(
    ("value", "reference"), [(None, 2.0), (2.0, None), (None, None), (2.0, 0), (2.0, 0.0)]
)
def test_ratio_is_none_without_both_figures_or_with_a_zero_reference(value, reference) -> None:
    assert ratio(value, reference) is None


# -- present and spread ----------------------------------------------------------------------


def test_present_skips_missing_and_none_keeps_zero_and_order() -> None:
    runs = [{"x": 3}, {"x": None}, {}, {"x": 0}, {"x": 1.5}]
    assert present(runs, "x") == [3, 0, 1.5]
    assert present([], "x") == []


def test_spread_of_nothing() -> None:
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    assert spread([None]) == {"median": None, "min": None, "max": None, "n": 0}


def test_spread_of_one_value() -> None:
    assert spread([2.5]) == {"median": 2.5, "min": 2.5, "max": 2.5, "n": 1}


def test_spread_odd_and_even_counts() -> None:
    assert spread([5.0, 1.0, 3.0]) == {"median": 3.0, "min": 1.0, "max": 5.0, "n": 3}
    assert spread([4.0, 1.0, 2.0, 8.0]) == {"median": 3.0, "min": 1.0, "max": 8.0, "n": 4}


def test_spread_skips_none() -> None:
    assert spread([None, 2.0, 6.0]) == {"median": 4.0, "min": 2.0, "max": 6.0, "n": 2}
