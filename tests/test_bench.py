"""The bench's analyses (a jack_midi_dump log, Link beat ticks) on hand-made input."""
from __future__ import annotations

import numpy as np

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
    assert s["priority"] in ("SCHED_FIFO", "nice -5", "normal")  # the daemon's worker priority, where allowed
    assert sys.getswitchinterval() == before


def test_report_puts_every_variant_beside_the_modules() -> None:
    from bridge.bench import report

    row = {"n": 10, "p50": 1.0, "p99": 2.0, "max": 3.0}
    text = report({"cpu, nn modules": {**row, "p50": 4.0, "p99": 8.0}, "cpu, fused int8": {**row, "ready_s": 0.5}},
                  [], "vaejam bench", "m", {"1 ms": row}, [{**row, "bands": 2, "n": 20, "bars_per_s": 500.0}])
    assert "| cpu, fused int8 | 10 | 1.00 | 2.00 | 3.00 | 0.25 | 0.25 | 0.50 |" in text
    assert "| 2 | 10 | 1.00 | 2.00 | 3.00 | 500 |" in text
    assert "| 1 ms | normal | 10 | 1.00 | 2.00 | 3.00 |" in text


def test_the_floor_counts_every_weight_of_a_bar_once_per_bar(tiny_model_dir) -> None:
    """The profiled products of a step (no piano) read exactly the fused weight matrices of that path:
    the piano encoder, MelodyNN, the ConditionalNNs and the four band decoders."""
    from bridge.bench import _engine, matmul_costs, network_floor

    engine = _engine(tiny_model_dir, "cpu", "float32", decode_piano=False)
    fused, bars = engine.fused, 3
    costs = matmul_costs(engine, bars)
    matrices = [fused.encoder[i] for i in (0, 2, 4, 6)] + [w for w, _ in fused.melody] + [w for w, _ in fused.conditional]
    matrices += [w[1:] for w in fused.decoder[0::2]]  # decoder weights (wl, w1, w2, w3) of guitar .. drums
    assert sum(c[0] for c in costs) == bars * sum(m.numel() * 4 for m in matrices)
    assert len(costs) == bars * len(matrices)
    floor = network_floor(tiny_model_dir, bars)
    assert floor["products"] == len(matrices) and 0 < floor["floor_ms"] and floor["read_gb_s"] > 0


def test_report_shows_the_floor() -> None:
    from bridge.bench import report

    row = {"n": 10, "p50": 1.0, "p99": 2.0, "max": 3.0}
    floor = {"products": 13, "weight_mb": 10.86, "mflop": 21.8, "read_gb_s": 57.0, "gflop_s": 50.1,
             "floor_ms": 0.5, "measured_ms": 0.85}
    text = report({"cpu, nn modules": row}, [], "vaejam bench", "m", floor=floor)
    assert "| 13 | 10.86 | 21.8 | 57.0 | 50.1 | 0.50 | 0.85 |" in text


class PeerAt120:
    """A Link peer's session state at 120 BPM whose beat 0 (a downbeat) is at host time 1 s."""

    def tempo(self) -> float:
        return 120.0

    def phaseAtTime(self, time_us: int, quantum: float) -> float:  # noqa: N802 - the binding's name
        return ((time_us - 1_000_000) / 500_000) % quantum


def test_link_beats_are_measured_against_the_peers_beat_of_the_same_phase() -> None:
    from bridge.bench_link import beat_errors_ms, parse_link_beats

    beats = parse_link_beats("0:1001000 24:1499500 96:2999700 120:3500000")  # tick:host micros, as status says
    assert beats == {0: 1_001_000, 24: 1_499_500, 96: 2_999_700, 120: 3_500_000}
    every, downbeats = beat_errors_ms(PeerAt120(), beats)
    # bar 1's downbeat 0.3 ms early is early, not almost a bar late; tick 120 is beat 1 of bar 1
    assert np.allclose(every, [1.0, -0.5, -0.3, 0.0]) and np.allclose(downbeats, [1.0, -0.3])
    every, downbeats = beat_errors_ms(PeerAt120(), beats, since_us=2_000_000)
    assert np.allclose(every, [-0.3, 0.0]) and np.allclose(downbeats, [-0.3])


def test_link_report_rows_and_a_missing_binding() -> None:
    from bridge.bench_link import LinkResult, link_report

    result = LinkResult(120.0, 60.0, 90.0, np.array([0.1, -0.2, 0.3]), np.array([0.1, -0.4]), np.array([0.2]),
                        {"link_relocations": 1, "late_bars": 0}, relocations_at_join=1)
    text = "\n".join(link_report([result]))
    assert "| 120 | 60 | 2 | 0.250 / 0.397 / 0.400 | 3 | 0.200 / 0.298 / 0.300 | 90 | 1 | 0.200 / 0.200 / 0.200 | 1 / 0 | 0 |" in text
    assert "Not measured: no binding." in link_report([], "no binding")


def test_link_measurements_take_turns_on_a_machine(tmp_path, monkeypatch) -> None:
    import pytest

    from bridge import bench_link

    monkeypatch.setattr(bench_link, "LOCK_PATH", tmp_path / "link.lock")
    with bench_link.link_session_lock():
        with pytest.raises(TimeoutError, match="another Link measurement"):  # a second run waits its turn
            with bench_link.link_session_lock(timeout_s=0.3):
                pass
    with bench_link.link_session_lock(timeout_s=0.3):  # and gets it once the first is done
        pass
