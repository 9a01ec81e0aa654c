"""The server's counters: a histogram observed per batch exports what per-value observation
would have."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from cascade_testbed.server.stats import BatchHistogram, ServerStats

BUCKETS = (0.001, 0.002, 0.005, 0.1, 1.0)


@given(st.lists(st.lists(st.sampled_from([0.0, 0.0005, 0.001, 0.0015, 0.002, 0.05, 0.1, 1.0,
                                          7.5, -0.001]), max_size=40), max_size=6))
@settings(max_examples=100, deadline=None)
def test_batch_histogram_exports_what_histogram_would(batches: list[list[float]]) -> None:
    """Same name, buckets (a value on a bound counts in that bound's bucket), count and sum."""
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("q_seconds", "Queue time.", BUCKETS, mine)
    plain = Histogram("q_seconds", "Queue time.", buckets=BUCKETS, registry=theirs)
    for batch in batches:
        batched.observe(batch)
        for v in batch:
            plain.observe(v)
    ours = {s.name + str(sorted(s.labels.items())): s.value
            for m in mine.collect() for s in m.samples}
    ref = {s.name + str(sorted(s.labels.items())): s.value
           for m in theirs.collect() for s in m.samples if not s.name.endswith("_created")}
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        assert abs(ours[k] - v) <= 1e-9 * max(1.0, abs(v)), k


def test_a_batch_shows_in_metrics_and_the_window() -> None:
    stats = ServerStats()
    stats.on_batch([0.0005, 0.003, 0.003], 0.004, overrun=False)
    text = generate_latest(stats.registry).decode()
    assert 'testbed_server_queue_seconds_bucket{le="0.001"} 1.0' in text
    assert 'testbed_server_queue_seconds_bucket{le="0.005"} 3.0' in text
    assert "testbed_server_queue_seconds_count 3.0" in text
    assert stats.totals.completed == 3 and abs(stats.totals.queue_s_sum - 0.0065) < 1e-12
