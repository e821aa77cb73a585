"""The Discord rate limiter against sequences of real header shapes, on a fake clock."""

from __future__ import annotations

import pytest

from actors.sinks.discord.pacing import MARGIN_S, RateLimits


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def limits(clock):
    rl = RateLimits(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t)
    rl.register("webhook:1", 5, 2.0)
    rl.register("webhook:2", 5, 2.0)
    return rl


def headers(limit=5, remaining=4, reset_after=2.0, bucket="abc", **extra) -> dict:
    h = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
         "X-RateLimit-Reset-After": str(reset_after), "X-RateLimit-Bucket": bucket}
    h.update(extra)
    return h


def test_before_any_header_five_posts_per_two_seconds(limits, clock):
    for _ in range(5):
        assert limits.delay("webhook:1") == 0
        limits.sent("webhook:1")
        clock.t += 0.1
    assert limits.delay("webhook:1") == pytest.approx(2.0 + MARGIN_S - 0.5)
    clock.t += 1.6
    assert limits.delay("webhook:1") == 0


def test_headers_drive_the_pace_once_they_arrive(limits, clock):
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, headers(remaining=1, reset_after=1.5))
    assert limits.delay("webhook:1") == 0
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, headers(remaining=0, reset_after=1.2))
    assert limits.delay("webhook:1") == pytest.approx(1.2 + MARGIN_S)
    clock.t += 1.2 + MARGIN_S
    assert limits.delay("webhook:1") == 0


def test_a_bucket_larger_than_the_default_is_used_in_full(limits, clock):
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, headers(limit=30, remaining=29, reset_after=60))
    for _ in range(29):  # far more than 5 in 2 s: Discord said so
        assert limits.delay("webhook:1") == 0
        limits.sent("webhook:1")
    assert limits.delay("webhook:1") == pytest.approx(60 + MARGIN_S)


def test_lower_case_headers_and_epoch_reset_without_reset_after(limits, clock):
    limits.sent("webhook:1")
    wall_reset = 1_700_000_000.0 + clock.t + 0.75
    limits.update("webhook:1", 200, {"x-ratelimit-limit": "5", "x-ratelimit-remaining": "0",
                                     "x-ratelimit-reset": f"{wall_reset:.3f}",
                                     "x-ratelimit-bucket": "b"})
    assert limits.delay("webhook:1") == pytest.approx(0.75 + MARGIN_S, abs=0.01)


def test_routes_sharing_a_bucket_share_its_limit(limits, clock):
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, headers(remaining=3, bucket="shared"))
    limits.sent("webhook:2")
    limits.update("webhook:2", 200, headers(remaining=0, reset_after=1.0, bucket="shared"))
    assert limits.delay("webhook:1") == pytest.approx(1.0 + MARGIN_S)


def test_429_body_retry_after_is_honoured(limits, clock):
    limits.sent("webhook:1")
    verdict = limits.update("webhook:1", 429,
                            headers(remaining=0, reset_after=0.2, **{"Retry-After": "1",
                                                                    "X-RateLimit-Scope": "user"}),
                            {"message": "You are being rate limited.", "retry_after": 0.734,
                             "global": False})
    assert verdict.retry_after == pytest.approx(0.734)
    assert not verdict.is_global and verdict.scope == "user"
    assert limits.delay("webhook:1") == pytest.approx(0.734 + MARGIN_S)
    assert limits.delay("webhook:2") == 0  # another webhook is not held


def test_429_from_a_proxy_with_only_retry_after_header(limits, clock):
    limits.sent("webhook:1")
    verdict = limits.update("webhook:1", 429, {"Retry-After": "3"}, None)
    assert verdict.retry_after == 3.0
    assert limits.delay("webhook:1") == pytest.approx(3.0 + MARGIN_S)


def test_global_429_holds_every_route(limits, clock):
    limits.sent("webhook:1")
    verdict = limits.update("webhook:1", 429, {"Retry-After": "2", "X-RateLimit-Global": "true",
                                               "X-RateLimit-Scope": "global"},
                            {"message": "You are being rate limited.", "retry_after": 1.5,
                             "global": True})
    assert verdict.is_global
    for route in ("webhook:1", "webhook:2"):
        assert limits.delay(route) == pytest.approx(1.5 + MARGIN_S)
    clock.t += 1.6
    assert limits.delay("webhook:2") == 0
    assert limits.counts["429_global"] == 1


def test_garbage_headers_leave_the_default_pace(limits, clock):
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, {"X-RateLimit-Limit": "many", "X-RateLimit-Remaining": "-1",
                                     "X-RateLimit-Reset-After": "nan"})
    assert limits.delay("webhook:1") == 0
    for _ in range(4):
        limits.sent("webhook:1")
    assert limits.delay("webhook:1") > 1.9


def test_snapshot_has_numbers_only(limits):
    limits.sent("webhook:1")
    limits.update("webhook:1", 200, headers(remaining=2))
    snap = limits.snapshot("webhook:1")
    assert set(snap) == {"global_wait_s", "limit", "remaining", "reset_in_s"}
    assert all(isinstance(v, (int, float)) for v in snap.values())
