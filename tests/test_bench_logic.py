"""The bench's pure logic: bound arithmetic, the sweeps' stop rules, the paced limit, the JSON line.

No timing is measured or asserted here; `edge-agent bench --quick` exercises the measuring code.
"""

import json
from pathlib import Path

import pytest

from edge_agent.bench import paced, report, search
from edge_agent.bench.bound import BoundResult, ModelRate, StageCost, bound_fps
from edge_agent.bench.cameras import Clip, farm_layout
from edge_agent.bench.cpu import CpuUse, thread_group, threads_percent
from edge_agent.bench.pipeline import PipelineStep
from edge_agent.bench.suite import BenchOptions, BenchReport, paced_check
from edge_agent.bench.ultralytics_run import UltralyticsStep


def _cost(stage, **tried):
    return StageCost.cheapest(stage, tried)


# The issue's facts for 320x192 on 2 cores: 2.2 + 0.08 + 2 x 3.5 + 0.07 = 9.35 ms -> 214 frames/s.
@pytest.mark.parametrize(("costs_ms", "cores", "expected"), [
    ([2.2, 0.08, 7.0, 0.07], 2, 2000 / 9.35),
    ([10.0], 1, 100.0),
    ([1.0, 1.0], 4, 2000.0),
])
def test_bound_is_cores_over_summed_costs(costs_ms, cores, expected):
    """bound = cores x 1000 / sum of per-frame CPU ms."""
    costs = [_cost(f"s{i}", only=ms) for i, ms in enumerate(costs_ms)]
    assert bound_fps(costs, cores) == pytest.approx(expected)


def test_stage_cost_keeps_the_cheapest_configuration():
    """The bound takes each stage's minimum over configurations, and says which it was."""
    cost = _cost("infer", **{"1 thread": 5.1, "2 threads spinning": 7.0, "2 threads no spinning": 5.4})
    assert (cost.cpu_ms, cost.config) == (5.1, "1 thread")
    assert set(cost.tried) == {"1 thread", "2 threads spinning", "2 threads no spinning"}


@pytest.mark.parametrize("tried", [{}])
def test_stage_cost_needs_a_measurement(tried):
    with pytest.raises(ValueError, match="nothing measured"):
        StageCost.cheapest("decode", tried)


@pytest.mark.parametrize(("costs_ms", "cores"), [([0.0], 2), ([1.0], 0)])
def test_bound_rejects_degenerate_inputs(costs_ms, cores):
    with pytest.raises(ValueError, match="positive cost"):
        bound_fps([_cost("s", only=ms) for ms in costs_ms], cores)


@pytest.mark.parametrize(("history", "stop"), [
    ([], False),
    ([60.0], False),
    ([60.0, 120.0], False),  # still rising
    ([60.0, 120.0, 123.0], True),  # +2.5%: within the noise margin
    ([60.0, 120.0, 124.0], False),  # +3.3%: a real rise
    ([52.0, 81.0, 130.0, 102.0], True),  # falling after a peak (Ultralytics)
    ([100.0, 100.0], True),  # flat
])
def test_saturation_rule(history, stop):
    """Stop once the newest step is not more than 3% above the best earlier one."""
    assert search.saturated(history) is stop


@pytest.mark.parametrize(("history", "index"), [([52.0, 81.0, 130.0, 102.0], 2), ([5.0, 9.0, 9.0], 1)])
def test_best_step_is_the_earliest_maximum(history, index):
    assert search.best(history) == index


@pytest.mark.parametrize(("start", "step", "maximum", "counts"), [
    (4, 4, 24, [4, 8, 12, 16, 20, 24]),
    (4, 4, 22, [4, 8, 12, 16, 20, 22]),
    (2, 4, 2, [2]),
])
def test_camera_counts_always_end_at_the_maximum(start, step, maximum, counts):
    assert search.camera_counts(start, step, maximum) == counts


def test_sweep_stops_when_told():
    """The sweep runs counts in order and stops at the first step `done` accepts."""
    fps_at = {4: 60.0, 8: 120.0, 12: 150.0, 16: 151.0, 20: 151.0}
    ran = []

    def run(n):
        ran.append(n)
        return fps_at[n]

    steps = search.sweep(run, [4, 8, 12, 16, 20], search.saturated)
    assert ran == [4, 8, 12, 16]
    assert steps == [60.0, 120.0, 150.0, 151.0]


@pytest.mark.parametrize(("drop", "p99", "budget", "sustained"), [
    (0.0, 40.0, 50.0, True),
    (0.01, 50.0, 50.0, True),  # both limits are inclusive
    (0.011, 40.0, 50.0, False),
    (0.0, 50.1, 50.0, False),
])
def test_paced_check(drop, p99, budget, sustained):
    check = paced.PacedCheck(8, drop, p99, budget)
    assert check.sustained is sustained
    assert (check.why_not == "") is sustained


def test_latency_budget():
    """max_wait_ms + 2 x one batch's inference time."""
    assert paced.latency_budget_ms(10, 21.5) == 53.0


@pytest.mark.parametrize(("results", "next_n", "sustained", "found"), [
    ({4: True, 8: True, 12: True}, None, 12, False),  # nothing failed yet: only a lower bound
    ({4: True, 8: True, 12: False}, 10, 8, True),  # bisect between 8 and 12
    ({4: True, 8: True, 12: False, 10: True}, 11, 10, True),
    ({4: True, 8: True, 12: False, 10: True, 11: False}, None, 10, True),  # known to one camera
    ({4: False}, 2, 0, True),
    ({4: False, 2: True, 3: True}, None, 3, True),
    ({4: True, 8: False, 12: True}, 6, 4, True),  # a noisy pass above a failure does not count
])
def test_paced_bisection(results, next_n, sustained, found):
    assert paced.next_count(results) == next_n
    assert paced.cameras_sustained(results) == sustained
    assert paced.limit_found(results) is found


@pytest.mark.parametrize(("saturated_fps", "camera_fps", "cameras"), [
    (200.0, 15.0, 7), (195.0, 15.0, 7), (120.0, 15.0, 4), (10.0, 15.0, 1),
])
def test_half_load_cameras(saturated_fps, camera_fps, cameras):
    assert paced.half_load_cameras(saturated_fps, camera_fps) == cameras


@pytest.mark.parametrize(("name", "group"), [
    ("camera-cam01", "camera threads"), ("inference", "inference workers"), ("publisher", "publisher thread"),
    ("paho-mqtt-client-bench", "MQTT client"), ("Thread-7", "other Python threads"),
])
def test_thread_groups(name, group):
    assert thread_group(name) == group


def test_threads_percent_is_per_core_and_sorted():
    start = {"camera threads": 1.0, "inference workers": 2.0}
    end = {"camera threads": 1.5, "inference workers": 3.8, "native (ORT pool, FFmpeg)": 0.2}
    assert threads_percent(start, end, 2.0) == {"inference workers": 90.0, "camera threads": 25.0,
                                                "native (ORT pool, FFmpeg)": 10.0}
    assert list(threads_percent(start, end, 2.0)) == ["inference workers", "camera threads",
                                                      "native (ORT pool, FFmpeg)"]


def test_farm_layout_spreads_mounts_over_servers():
    layout = farm_layout(10, clips=3, per_server=4)
    assert [len(server) for server in layout] == [4, 4, 2]
    assert layout[0] == {"cam01": 0, "cam02": 1, "cam03": 2, "cam04": 0}
    assert list(layout[2]) == ["cam09", "cam10"]


def _step(cameras, processed_fps, *, p99=40.0, infer_p50=20.0):
    stages = {s: {"p50": 1.0, "p95": 2.0, "p99": 3.0} for s in ("decode", "queue", "preprocess", "postprocess",
                                                               "publish")}
    stages["infer"] = {"p50": infer_p50, "p95": infer_p50, "p99": infer_p50}
    stages["total"] = {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}
    return PipelineStep(cameras=cameras, camera_fps=15.0, window_s=10.0, processed_fps=processed_fps,
                        decoded_fps=cameras * 15.0, slot_drops=0, stages_ms=stages, mean_batch=4.0,
                        batch_fill=0.5, cpu=CpuUse(150.0, 10.0, 165.0, 5.0), inference_errors=0,
                        threads_cpu={"camera threads": 40.0, "inference workers": 100.0})


def _report(ultralytics_fps=130.0):
    bound = BoundResult(
        costs=(_cost("decode_scale", a=2.2), _cost("letterbox", a=0.08), _cost("infer", a=7.0),
               _cost("postprocess", a=0.07)),
        cores=2, input_hw=(192, 320), scaled_hw=(180, 320), max_batch=8,
        rates=(ModelRate(1, spin=True, batch=8, wall_ms_per_batch=44.0, cpu_ms_per_image=5.5),
               ModelRate(2, spin=True, batch=8, wall_ms_per_batch=28.0, cpu_ms_per_image=7.0)),
        detections_per_frame=4.0, notes={"decode_only_ms": 2.0},
    )
    steps = [_step(4, 60.0), _step(8, 120.0), _step(12, 180.0), _step(14, 200.0, p99=80.0),
             _step(16, 201.0, p99=90.0), _step(7, 105.0, p99=45.0)]
    options = BenchOptions(model=Path("models/demo-parts.onnx"))
    ultra = [UltralyticsStep(4, 15.0, 52.0, 520, 10.0, 180.0, ((4, 3, 192, 320),)),
             UltralyticsStep(12, 15.0, ultralytics_fps, 1300, 10.0, 190.0, ((12, 3, 192, 320),)),
             UltralyticsStep(16, 15.0, 0.0, 0, 0.0, 0.0, (), error="exit 1")]
    return BenchReport(
        options=options, machine={"cpu": "test", "cores": "2 usable of 2", "memory": "1 GiB", "os": "Linux",
                                  "python": "3.11", "packages": ""},
        model_label="demo-parts@1.0.0 (abc)", clip=Clip(Path("cam1.mp4"), 1280, 720, 15.0, 300), clips=3,
        bound=bound, pipeline=sorted(steps, key=lambda s: s.cameras),
        checks={s.cameras: paced_check(s, options.max_wait_ms) for s in steps},
        ultralytics=ultra, ultralytics_skipped=None, duration_s=500.0,
    )


def test_json_line_has_the_issue_fields_and_consistent_ratios():
    """The last line is one JSON object with every field the issue names, ratios from those fields."""
    doc = json.loads(report.json_line(_report()))
    assert set(report.JSON_FIELDS) <= set(doc)
    assert doc["pipeline_fps"] == 201.0
    assert doc["pipeline_cameras"] == 16
    assert doc["bound_fps"] == pytest.approx(2000 / 9.35, abs=0.05)
    assert doc["ratio_vs_bound"] == pytest.approx(201.0 / (2000 / 9.35), abs=1e-3)
    assert doc["ultralytics_fps"] == 130.0  # the failed 16-camera run does not count
    assert doc["ratio_vs_ultralytics"] == pytest.approx(201.0 / 130.0, abs=1e-3)
    assert doc["model_fps"] == pytest.approx(1000 * 8 / 28.0, abs=0.05)
    # budget 10 + 2 x 20 = 50 ms: 14 cameras (p99 80) fail on latency and drops, 12 pass
    assert doc["cameras_at_15fps"] == 12
    assert doc["half_load_cameras"] == 7
    assert doc["p99_total_ms"] == 45.0
    assert doc["targets_met"] == {"ratio_vs_bound": True, "ratio_vs_ultralytics": True, "p99_at_half_load": True}


def test_json_line_without_ultralytics_has_null_ratio():
    report_ = _report()
    report_.ultralytics = []
    report_.ultralytics_skipped = "--no-ultralytics"
    doc = json.loads(report.json_line(report_))
    assert doc["ultralytics_fps"] is None
    assert doc["ratio_vs_ultralytics"] is None
    assert doc["targets_met"]["ratio_vs_ultralytics"] is None
    assert "Skipped: --no-ultralytics" in report.render(report_)


def test_render_has_every_section():
    text = report.render(_report())
    for heading in ("Machine bound", "Pure model throughput", "edge-agent pipeline", "Per-stage latency",
                    "Ultralytics multi-stream", "Summary"):
        assert heading in text


@pytest.mark.parametrize(("loads", "kept", "runs"), [
    ([0.0], 0.0, 1),  # quiet at once: measured once
    ([40.0, 5.0], 5.0, 2),  # noisy, then quiet: the quiet one
    ([40.0, 30.0, 50.0], 30.0, 3),  # noisy every time: the least disturbed of the three
])
def test_noisy_measurements_are_repeated(loads, kept, runs):
    """A step measured while other processes loaded the machine is repeated after waiting for quiet."""
    pending = list(loads)
    waits, noisy = [], []
    result = search.retry_when_noisy(lambda: pending.pop(0), lambda load: load, limit=15.0,
                                     wait_quiet=lambda: waits.append(1), on_noise=noisy.append)
    assert result == kept
    assert len(loads) - len(pending) == runs
    assert len(waits) == runs - 1
    assert noisy == [load for load in loads[:runs] if load >= 15.0]


def test_refine_count_looks_between_the_peak_and_its_neighbours():
    """The peak at 12 with 8 and 16 measured: try 14 (above first), then 10; stop at 1 apart."""
    assert search.refine_count({4: 60.0, 8: 118.0, 12: 120.0, 16: 112.0}) == 14
    assert search.refine_count({4: 60.0, 8: 118.0, 12: 120.0, 14: 115.0, 16: 112.0}) == 13
    assert search.refine_count({8: 118.0, 12: 120.0}) == 10
    assert search.refine_count({8: 118.0, 9: 121.0, 10: 119.0}) is None
    assert search.refine_count({4: 60.0}) is None
    assert search.refine_count({}) is None
