"""The bench's analysis of a jack_midi_dump log, on hand-made lines."""
from __future__ import annotations

from bridge.bench import grid_errors, summary


def test_note_ons_are_measured_against_the_nearest_step_clock() -> None:
    clocks = [f"  {1000 + 600 * k}: f8" for k in range(30)]  # steps at 1000, 2800, 4600, ...
    notes = ["  1003: 92 3c 5a note on", "  2700: 92 3c 5a", "  2799: 99 40 64", "  2801: 92 3c 00 (an off)"]
    errors, firsts = grid_errors("\n".join(["  0: fa", *clocks, *notes]))
    assert errors.tolist() == [3, -100, -1]  # early notes count as early, not a step late
    assert firsts.tolist() == [3, -100]


def test_a_new_start_restarts_the_clock_count() -> None:
    dump = "\n".join(["  0: fa", "  10: f8", "  20: f8", "  500: fa", *[f"  {600 + 10 * k}: f8" for k in range(9)],
                      "  631: 90 3c 40"])
    errors, _ = grid_errors(dump)
    assert errors.tolist() == [1]


def test_summary() -> None:
    s = summary([1.0, 2.0, 3.0, 100.0])
    assert s["n"] == 4 and s["p50"] == 2.5 and s["max"] == 100.0


def test_the_worker_thread_timing_runs_and_restores_the_switch_interval(tiny_model_dir) -> None:
    import sys

    from bridge.bench import threaded_latency

    before = sys.getswitchinterval()
    s = threaded_latency(tiny_model_dir, 5, 0.001)
    assert s["n"] == 5 and 0 < s["p50"] <= s["max"]
    assert sys.getswitchinterval() == before


def test_report_puts_every_variant_beside_the_modules() -> None:
    from bridge.bench import report

    row = {"n": 10, "p50": 1.0, "p99": 2.0, "max": 3.0}
    text = report({"cpu, nn modules": {**row, "p50": 4.0, "p99": 8.0}, "cpu, fused int8": row}, [], "vaejam bench", "m",
                  {"1 ms": row}, [{**row, "bands": 2, "n": 20, "bars_per_s": 500.0}])
    assert "| cpu, fused int8 | 10 | 1.00 | 2.00 | 3.00 | 0.25 | 0.25 |" in text
    assert "| 2 | 10 | 1.00 | 2.00 | 3.00 | 500 |" in text
