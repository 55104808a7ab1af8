"""The burst row's arithmetic (bench/hearth_bench/burst.py)."""
from hearth_bench.burst import Sampler


def test_replica_seconds_integrates_the_samples_in_the_window():
    s = Sampler(status=lambda: {})
    s.samples = [(0.0, 1), (1.0, 8), (3.0, 8), (4.0, 1), (10.0, 1)]
    # 1×1 s + 8×2 s + 8×1 s + 1×6 s
    assert s.replica_seconds(0.0, 10.0) == 1 + 16 + 8 + 6
    assert s.replica_seconds(1.0, 4.0) == 24
    assert s.peak() == 8


def test_no_samples():
    s = Sampler(status=lambda: {})
    assert s.replica_seconds(0.0, 1.0) == 0
    assert s.peak() == 0


def test_settled_after_is_when_the_count_fell_for_good():
    s = Sampler(status=lambda: {})
    s.samples = [(0.0, 8), (1.0, 8), (2.0, 4), (2.5, 8), (3.0, 1), (9.0, 1)]
    assert s.settled_after(1.0, 8) == 2.0
    s.samples = [(0.0, 8), (5.0, 8)]
    assert s.settled_after(0.0, 8) is None
