"""The restart policy and the leak trend, as specs: no processes needed."""

from __future__ import annotations

import random

from catalyst_config import RestartConfig
from supervisor.policy import RestartPolicy
from supervisor.watch import MemoryHistory, Sample, robust_slope_mb_per_min


def test_first_restart_after_a_stable_run_is_immediate():
    policy = RestartPolicy(RestartConfig(backoff_initial_s=0.5, period_s=60, max_restarts=5))
    assert policy.on_failure(0.0).delay_s == 0.0
    assert policy.on_failure(1000.0).delay_s == 0.0  # the earlier one is out of the period


def test_repeated_restarts_back_off_exponentially_up_to_the_cap():
    policy = RestartPolicy(RestartConfig(backoff_initial_s=0.5, backoff_max_s=3, period_s=60,
                                         max_restarts=10))
    delays = [policy.on_failure(float(i)).delay_s for i in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_more_than_max_restarts_within_the_period_gives_up():
    policy = RestartPolicy(RestartConfig(max_restarts=3, period_s=10))
    decisions = [policy.on_failure(float(i)) for i in range(4)]
    assert [d.give_up for d in decisions] == [False, False, False, True]


def test_restarts_spread_beyond_the_period_never_give_up():
    policy = RestartPolicy(RestartConfig(max_restarts=2, period_s=10))
    assert not any(policy.on_failure(i * 11.0).give_up for i in range(20))


def _history(rss_at, seconds=300, every=0.5):
    h = MemoryHistory(maxlen=10_000)
    t = 0.0
    while t <= seconds:
        h.add(t, rss_at(t))
        t += every
    return h


def test_steady_leak_is_caught_by_the_trend():
    h = _history(lambda t: 100 + 0.2 * t)  # 12 MB/min
    assert abs(h.leak_rate(300) - 12.0) < 0.5


def test_one_allocation_spike_is_not_a_leak():
    h = _history(lambda t: 100 + (80 if 150 <= t < 160 else 0) + random.uniform(-0.5, 0.5))
    assert h.leak_rate(300) < 1.0


def test_warm_up_that_levels_off_is_not_a_leak():
    h = _history(lambda t: 60 + min(t, 20) * 2.0)  # +40 MB in 20 s, then flat
    assert h.leak_rate(300) < 1.0


def test_too_little_history_gives_no_verdict():
    h = _history(lambda t: 100 + t, seconds=20)
    assert h.leak_rate(300) is None


def test_slope_of_flat_samples_is_zero():
    assert robust_slope_mb_per_min([Sample(float(t), 50.0) for t in range(100)]) == 0.0
