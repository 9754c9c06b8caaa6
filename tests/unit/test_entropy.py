"""The entropy estimators against hand-computed values, their errors, and their bounds."""

from __future__ import annotations

import math
import re

import pytest

from glimp_graph import ESTIMATORS, EstimatorError, GlimpConfig
from glimp_graph.entropy import EXACT_TAIL_TOLERANCE, exact, lower_bound, renormalized, upper_bound

LN = math.log


def test_registry_names_every_estimator() -> None:
    assert {"renormalized": renormalized, "lower": lower_bound, "upper": upper_bound, "exact": exact} == ESTIMATORS


def test_renormalized_uniform_over_four_is_ln4() -> None:
    assert renormalized([LN(0.25)] * 4) == pytest.approx(LN(4))


def test_renormalized_rescales_a_partial_mass() -> None:
    # 0.2, 0.2 of the mass: renormalized to 0.5, 0.5 -> ln 2, whatever the tail
    assert renormalized([LN(0.2), LN(0.2)]) == pytest.approx(LN(2))
    # 0.3, 0.1 -> 0.75, 0.25
    expected = -(0.75 * LN(0.75) + 0.25 * LN(0.25))
    assert renormalized([LN(0.3), LN(0.1)]) == pytest.approx(expected)


def test_single_certain_token_has_zero_entropy() -> None:
    for name in ("renormalized", "lower", "exact"):
        assert ESTIMATORS[name]([0.0]) == pytest.approx(0.0, abs=1e-12)
    assert upper_bound([0.0], vocab_size=10) == pytest.approx(0.0, abs=1e-12)


def test_lower_bound_counts_the_tail_as_one_token() -> None:
    probs = [0.5, 0.2, 0.1]
    r = 0.2
    expected = -sum(p * LN(p) for p in probs) - r * LN(r)
    assert lower_bound([LN(p) for p in probs]) == pytest.approx(expected)


def test_upper_bound_spreads_the_tail_over_the_vocabulary() -> None:
    probs = [0.5, 0.2, 0.1]
    r, vocab = 0.2, 100
    expected = -sum(p * LN(p) for p in probs) - r * LN(r / (vocab - len(probs)))
    assert upper_bound([LN(p) for p in probs], vocab_size=vocab) == pytest.approx(expected)


def test_bounds_coincide_without_a_tail() -> None:
    logprobs = [LN(0.5), LN(0.25), LN(0.25)]
    h = -(0.5 * LN(0.5) + 2 * 0.25 * LN(0.25))
    assert lower_bound(logprobs) == pytest.approx(h)
    assert upper_bound(logprobs, vocab_size=50) == pytest.approx(h)
    assert exact(logprobs) == pytest.approx(h)
    assert renormalized(logprobs) == pytest.approx(h)


def test_exact_of_a_complete_distribution() -> None:
    assert exact([LN(0.5), LN(0.5)]) == pytest.approx(LN(2))
    # a tail under the tolerance is accepted and ignored
    small_tail = 1.0 - EXACT_TAIL_TOLERANCE / 2
    assert exact([LN(small_tail)]) == pytest.approx(-small_tail * LN(small_tail))


def test_exact_raises_when_mass_is_missing() -> None:
    with pytest.raises(EstimatorError, match=r"whole distribution.*0\.5000"):
        exact([LN(0.25), LN(0.25)])


@pytest.mark.parametrize("vocab", [None, 3, 2])
def test_upper_bound_needs_a_vocabulary_larger_than_k(vocab: int | None) -> None:
    with pytest.raises(EstimatorError, match=f"vocab_size={vocab!r}"):
        upper_bound([LN(0.5), LN(0.2), LN(0.1)], vocab_size=vocab)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("bad", [math.nan, 0.5, math.inf])
def test_invalid_logprobs_raise(estimator: str, bad: float) -> None:
    with pytest.raises(EstimatorError, match=re.escape(repr(bad))):
        ESTIMATORS[estimator]([LN(0.5), bad], vocab_size=100)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_empty_logprobs_raise(estimator: str) -> None:
    with pytest.raises(EstimatorError, match="empty"):
        ESTIMATORS[estimator]([], vocab_size=100)


def test_renormalized_without_mass_raises() -> None:
    with pytest.raises(EstimatorError, match="no probability mass"):
        renormalized([-math.inf, -math.inf])


def test_minus_infinity_is_a_zero_probability_token() -> None:
    assert renormalized([LN(0.5), LN(0.5), -math.inf]) == pytest.approx(LN(2))


def test_estimator_errors_are_value_errors() -> None:
    assert issubclass(EstimatorError, ValueError)


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_renormalized_is_bounded_by_ln_k(k: int) -> None:
    # uniform is the maximum; any other top-k is below it
    assert renormalized([LN(0.01)] * k) == pytest.approx(LN(k))
    skewed = [LN(0.5)] + [LN(0.4 / k)] * (k - 1)
    assert renormalized(skewed) <= LN(k) + 1e-12


def test_config_applies_the_named_estimator_and_a_callable() -> None:
    logprobs = [LN(0.5), LN(0.2)]
    assert GlimpConfig(estimator="lower").estimate(logprobs) == pytest.approx(lower_bound(logprobs))
    assert GlimpConfig(estimator="upper", vocab_size=1000).estimate(logprobs) == pytest.approx(
        upper_bound(logprobs, vocab_size=1000)
    )

    def constant(logprobs: list[float], *, vocab_size: int | None = None) -> float:
        return 0.123

    config = GlimpConfig(estimator=constant)
    assert config.estimate(logprobs) == 0.123
    assert config.estimator_name == "constant"


# --------------------------------------------------------------------------- properties


def test_property_bounds_hold() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @st.composite
    def top_k(draw: st.DrawFn) -> list[float]:
        weights = draw(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1, max_size=30))
        mass = draw(st.floats(min_value=1e-3, max_value=1.0))
        total = sum(weights)
        return [math.log(w / total * mass) for w in weights]

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(logprobs=top_k(), extra=st.integers(min_value=1, max_value=200_000))
    def check(logprobs: list[float], extra: int) -> None:
        k = len(logprobs)
        vocab = k + extra
        h_ren = renormalized(logprobs)
        h_low = lower_bound(logprobs)
        h_up = upper_bound(logprobs, vocab_size=vocab)
        assert h_ren >= 0.0
        assert h_low >= 0.0
        assert h_up >= 0.0
        assert h_ren <= math.log(k) + 1e-9
        assert h_low <= h_up + 1e-9
        # the true entropy of any completion lies between the bounds; the complete top-k is one completion
        assert h_up <= math.log(vocab) + 1e-9

    check()
