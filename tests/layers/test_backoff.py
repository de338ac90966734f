"""The backoff family: exact schedules, caps, and jitter bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turret import ConstantBackoff, ExponentialBackoff, Jitter, LinearBackoff


def test_exponential_schedule_without_jitter_is_exact_and_capped() -> None:
    b = ExponentialBackoff(base=0.5, factor=2, max=3, jitter=False)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_exponential_keeps_its_old_constructor() -> None:
    assert ExponentialBackoff().jitter is Jitter.FULL
    assert ExponentialBackoff(jitter=False).jitter is Jitter.NONE
    assert ExponentialBackoff(jitter="decorrelated").jitter is Jitter.DECORRELATED
    assert ExponentialBackoff(factor=2, jitter=False).delay(10**6) == 300.0  # no overflow


def test_linear_and_constant_schedules() -> None:
    lin = LinearBackoff(base=1, step=0.5, max=2.2)
    assert [lin.delay(n) for n in range(1, 6)] == [1.0, 1.5, 2.0, 2.2, 2.2]
    assert [ConstantBackoff(0.25).delay(n) for n in (1, 5, 50)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ExponentialBackoff(base=-1), "base must be >= 0"),
        (lambda: ExponentialBackoff(factor=0.5), "factor must be >= 1"),
        (lambda: LinearBackoff(step=-1), "step must be >= 0"),
        (lambda: ConstantBackoff(float("nan")), "seconds must be >= 0"),
        (lambda: ConstantBackoff(1, jitter=Jitter.DECORRELATED), "cannot use Jitter.DECORR"),
        (lambda: ExponentialBackoff(jitter="sometimes"), "jitter must be a Jitter"),
    ],
)
def test_invalid_configs_say_what_is_wrong(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


backoffs = st.one_of(
    st.builds(
        ExponentialBackoff,
        base=st.floats(0, 10),
        factor=st.floats(1, 5),
        max=st.floats(0, 100),
        jitter=st.sampled_from(Jitter),
    ),
    st.builds(
        LinearBackoff,
        base=st.floats(0, 10),
        step=st.floats(0, 10),
        max=st.floats(0, 100),
        jitter=st.sampled_from(Jitter),
    ),
)


@given(backoffs, st.integers(min_value=-3, max_value=10_000))
def test_every_delay_is_within_zero_and_the_cap(b: ExponentialBackoff, attempt: int) -> None:
    d = b.delay(attempt)
    assert 0.0 <= d <= b.max


@given(
    base=st.floats(0.01, 10),
    factor=st.floats(1, 4),
    cap=st.floats(0.01, 1000),
    attempt=st.integers(1, 60),
)
def test_jitter_stays_within_its_documented_range(
    base: float, factor: float, cap: float, attempt: int
) -> None:
    raw = ExponentialBackoff(base=base, factor=factor, max=cap, jitter=Jitter.NONE).delay(attempt)
    full = ExponentialBackoff(base=base, factor=factor, max=cap, jitter=Jitter.FULL)
    assert 0 <= full.delay(attempt) <= raw
    dec = ExponentialBackoff(base=base, factor=factor, max=cap, jitter=Jitter.DECORRELATED)
    assert min(base, cap) <= dec.delay(attempt) <= cap


def test_full_jitter_actually_varies() -> None:
    b = ExponentialBackoff(base=1, factor=2, max=100, jitter=Jitter.FULL)
    assert len({b.delay(5) for _ in range(20)}) > 1
