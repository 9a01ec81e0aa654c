"""A server that stops answering its status polls: the pure watch, the verdict and the
tenancy notes (testbed/stalls.py, testbed/verdict.py)."""

from __future__ import annotations

from cascade_testbed.testbed.stalls import Stall, StallWatch
from cascade_testbed.testbed.verdict import run_problems, tenancy_notes


def polls(watch: StallWatch, seq: list[tuple[float, bool, float]]) -> list[Stall]:
    return [s for t, ok, took in seq if (s := watch.poll(t, ok, took)) is not None]


class TestStallWatch:
    def test_a_gap_past_the_threshold_is_one_stall_from_last_good_to_next_good(self) -> None:
        watch = StallWatch(stall_s=2.5, late_s=0.25)
        got = polls(watch, [(0.0, True, 0.01), (1.0, True, 0.01), (2.0, False, 0.5),
                            (3.0, False, 0.5), (4.0, False, 0.5), (5.0, True, 0.02),
                            (6.0, True, 0.01)])
        assert got == [Stall(1.0, 5.0, 3)] and got[0].duration_s == 4.0

    def test_late_answers_count_as_missing(self) -> None:
        watch = StallWatch(stall_s=2.5, late_s=0.25)
        got = polls(watch, [(0.0, True, 0.01), (1.0, True, 0.3), (2.0, True, 0.4),
                            (3.0, True, 0.45), (4.0, True, 0.01)])
        assert got == [Stall(0.0, 4.0, 3)]

    def test_a_short_gap_is_not_a_stall(self) -> None:
        watch = StallWatch(stall_s=2.5)
        assert polls(watch, [(0.0, True, 0.0), (1.0, False, 0.5), (2.0, False, 0.5),
                             (2.5, True, 0.0)]) == []
        assert watch.end(10.0) is None  # nothing open

    def test_a_stall_still_going_at_the_end_counts_up_to_it(self) -> None:
        watch = StallWatch(stall_s=2.5)
        polls(watch, [(0.0, True, 0.0), (1.0, False, 0.5), (2.0, False, 0.5)])
        assert watch.end(6.0) == Stall(0.0, 6.0, 2)
        assert watch.end(7.0) is None  # reported once

    def test_after_an_end_the_watch_starts_afresh(self) -> None:
        """The server died (or the run ended): a restarted server's first unanswered polls
        count from themselves, not from the last answer of the one before."""
        watch = StallWatch(stall_s=2.5)
        polls(watch, [(0.0, True, 0.0), (1.0, True, 0.0)])
        assert watch.end(2.0) is None  # dead at 2.0, nothing missed yet
        assert polls(watch, [(5.0, False, 0.5), (6.0, True, 0.0)]) == []  # restarting

    def test_no_answer_from_the_first_poll_counts_from_it(self) -> None:
        watch = StallWatch(stall_s=2.5)
        assert polls(watch, [(0.5, False, 0.5), (1.5, False, 0.5), (2.5, False, 0.5),
                             (3.5, False, 0.5), (4.5, True, 0.0)]) == [Stall(0.5, 4.5, 4)]


def summary_with(**run: object) -> dict[str, object]:
    return {"samples": {"generated": 100, "forwarded": 10}, "run": run}


class TestVerdict:
    def test_an_unexplained_stall_fails_the_run_and_says_when(self) -> None:
        stalls = [{"start_s": 3.2, "end_s": 8.3, "duration_s": 5.1, "polls": 5},
                  {"start_s": 12.0, "end_s": 15.0, "duration_s": 3.0, "polls": 3}]
        problems = run_problems(summary_with(stalls=stalls), None)
        assert problems == ["the server did not answer for 5.1 s (run time 3.2-8.3 s) and 1 "
                            "shorter time though its process was alive (events: server_stall)"]

    def test_a_planned_server_kill_explains_a_stall(self) -> None:
        stalls = [{"start_s": 3.0, "end_s": 6.0, "duration_s": 3.0, "polls": 2}]
        assert run_problems(summary_with(stalls=stalls, stalls_explained=True), None) == []
        assert run_problems(summary_with(stalls=[]), None) == []


class TestTenancyNotes:
    DEVICES = frozenset({"a", "b", "c", "d"})

    def notes(self, fallbacks: dict[str, int] | None = None,
              limited: dict[str, int] | None = None, forwarded: int = 100, heavy: int = 100,
              arrivals: int = 100) -> list[str]:
        return tenancy_notes(fallbacks or {}, limited or {}, set(self.DEVICES),
                             forwarded=forwarded, heavy=heavy, server_arrivals=arrivals)

    def test_quiet_when_shared(self) -> None:
        assert self.notes({"a": 10, "b": 10, "c": 12}, {"a": 5, "b": 5}) == []

    def test_one_device_with_most_of_the_fallbacks_is_named(self) -> None:
        assert self.notes({"a": 30, "b": 5, "c": 5}) == [
            "device a has 75% of the light answers given for the server (30 of 40 fallbacks "
            "and rejections)"]

    def test_few_counts_say_nothing(self) -> None:
        assert self.notes({"a": 15, "b": 1}, {"x": 19}) == []

    def test_an_outside_client_rate_limited_is_said_to_be_one(self) -> None:
        assert self.notes(limited={"flooder": 900, "a": 10}) == [
            "flooder, a client that is not one of this run's devices, was rate limited 900 "
            "times (99% of the server's rate-limit refusals)"]

    def test_starved_heavy_answers_while_others_took_the_server(self) -> None:
        assert self.notes(forwarded=200, heavy=20, arrivals=5000) == [
            "this run's devices got the heavy model's answer for 10% of their 200 forwarded "
            "samples while the server took 4800 requests from other clients"]
        assert self.notes(forwarded=200, heavy=20, arrivals=300) == []  # an overload, no one else
