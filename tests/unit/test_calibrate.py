"""pipeline/machine/calibrate.py: `train.precision: auto` on a CPU is chosen by timing, and cached."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.machine import calibrate
from pipeline.machine.runtime import resolve_precision

SHAPE = (16, 32, 50, 64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "precision.json"
    monkeypatch.setenv("BOTTOM_UP_PRECISION_CACHE", str(path))
    return path


def timings(monkeypatch, fp32: float, bf16: float) -> list:
    calls = []

    def fake(d_model, d_mlp, d_vocab, tokens, repeats=7):
        calls.append((d_model, tokens))
        return fp32, bf16

    monkeypatch.setattr(calibrate, "time_both", fake)
    return calls


@pytest.mark.parametrize("fp32, bf16, expected", [(1.0, 0.5, "bf16"), (1.0, 0.97, "fp32"), (1.0, 1.5, "fp32")])
def test_the_faster_precision_wins_by_a_margin(cache, monkeypatch, fp32, bf16, expected):
    timings(monkeypatch, fp32, bf16)
    assert calibrate.cpu_precision(*SHAPE) == expected
    assert resolve_precision("auto", torch.device("cpu"), shape=SHAPE) == (torch.bfloat16 if expected == "bf16" else None)


def test_measured_once_then_read_from_the_cache(cache, monkeypatch):
    calls = timings(monkeypatch, 1.0, 0.5)
    assert calibrate.cpu_precision(*SHAPE) == "bf16" and len(calls) == 1
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["choice"] == "bf16" and entry["fp32_ms"] == 1000.0 and entry["bf16_ms"] == 500.0
    calls.clear()
    timings(monkeypatch, 0.5, 1.0)  # the machine would now say fp32: the cached answer stands
    assert calibrate.cpu_precision(*SHAPE) == "bf16"
    # another shape (or thread count, CPU, torch) is another question: measured, and both kept
    assert calibrate.cpu_precision(32, 64, 50, 64) == "fp32"
    assert len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_is_measured_again_and_rewritten(cache, monkeypatch):
    cache.write_text("{not json")
    timings(monkeypatch, 1.0, 0.5)
    assert calibrate.cpu_precision(*SHAPE) == "bf16"
    assert len(json.loads(cache.read_text())) == 1


def test_explicit_settings_and_cuda_never_measure(cache, monkeypatch):
    calls = timings(monkeypatch, 1.0, 0.5)
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    assert calls == [] and not cache.exists()


def test_the_real_measurement_times_both_and_decides(cache):
    # the real timing on this machine, at tiny shapes: both precisions run, the answer is one of the two
    fp32, bf16 = calibrate.time_both(*SHAPE, repeats=1)
    assert fp32 > 0 and bf16 > 0
    assert calibrate.cpu_precision(*SHAPE) in ("bf16", "fp32")
    assert "threads" in next(iter(json.loads(cache.read_text())))
