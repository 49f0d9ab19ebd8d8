"""pipeline.train.convergence: whether a training run converged, from its dev-loss log and stop reason."""
from __future__ import annotations

import json

import pytest

from pipeline.records.files import write_json
from pipeline.train.convergence import THRESHOLD, convergence, model_convergence, training_summary


def curve(losses, every: int = 100) -> list[dict]:
    return [{"step": every * (i + 1), "dev_loss": loss} for i, loss in enumerate(losses)]


def test_plateaued_curve_has_converged():
    # steps 100..800; the best by step 600 is 3.001, by 800 3.0: 0.03% in the last quarter
    result = convergence(curve([6.0, 4.5, 3.6, 3.2, 3.05, 3.001, 3.0005, 3.0]), "max_steps")
    assert result["converged"] is True
    assert result["last_quarter_improvement"] == pytest.approx((3.001 - 3.0) / 3.001)
    assert result["steps"] == 800 and result["best_dev_loss"] == 3.0


def test_still_falling_curve_has_not_converged_whatever_the_stop_reason():
    losses = [6.0, 5.0, 4.3, 3.8, 3.4, 3.1, 2.9, 2.7]
    for stop in ("max_steps", "max_minutes", None):
        result = convergence(curve(losses), stop)
        assert result["converged"] is False, stop
        assert result["last_quarter_improvement"] == pytest.approx((3.1 - 2.7) / 3.1)
        assert "still falling" in result["reason"]


def test_early_stopping_has_converged():
    # the dev loss rose for the last evaluations: training stopped on patience
    result = convergence(curve([6.0, 4.0, 3.5, 3.6, 3.7, 3.8]), "early_stopping")
    assert result["converged"] is True and result["reason"] == "early stopping"
    assert result["best_dev_loss"] == 3.5


def test_early_stopping_with_a_late_best_is_converged_and_says_how_late():
    # MLM seed 1 of the default run: three evaluations without a better dev loss, while the last
    # quarter had still improved it by ~5%
    losses = [5.3, 4.5, 3.9, 3.5, 3.26, 3.09, 2.91, 2.81, 2.75, 2.68, 2.61, 2.54, 2.499, 2.51, 2.504, 2.503]
    result = convergence(curve(losses), "early_stopping")
    assert result["converged"] is True
    assert f"its last quarter had improved the dev loss by {100 * result['last_quarter_improvement']:.2f}%" in result["reason"]
    assert result["last_quarter_improvement"] >= THRESHOLD
    assert convergence(curve([6.0, 4.0, 3.5, 3.6, 3.7, 3.8]), "early_stopping")["last_quarter_improvement"] < THRESHOLD


def test_threshold_is_the_boundary():
    losses = [5.0, 4.0, 4.0, 4.0 * (1 - THRESHOLD) + 1e-6]  # just under THRESHOLD in the last quarter
    assert convergence(curve(losses))["converged"] is True
    assert convergence(curve([5.0, 4.0, 4.0, 4.0 * (1 - 2 * THRESHOLD)]))["converged"] is False


def test_too_few_evaluations_and_failed_ones_say_not_converged():
    assert convergence([], "max_steps")["converged"] is False
    one = convergence(curve([4.0]), "max_steps")
    assert one["converged"] is False and one["last_quarter_improvement"] is None
    # a NaN evaluation is left out: what is left is a plateau
    assert convergence(curve([5.0, 4.0, float("nan"), 4.0, 4.0, 3.999]))["converged"] is True


def test_model_folder_is_read_from_its_log_and_summary(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in curve([6.0, 5.0, 4.0, 3.0])))
    assert model_convergence(tmp_path)["converged"] is False  # no summary: its stop reason is unknown
    write_json(tmp_path / "summary.json", {"stop_reason": "early_stopping"})
    assert model_convergence(tmp_path)["converged"] is True


def trained(folder, objective, kind, stop, losses, dev):
    folder.mkdir(parents=True)
    entries = curve(losses)
    (folder / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    write_json(folder / "summary.json", {"objective": objective, "kind": kind, "seed": 1, "steps": entries[-1]["step"],
                                         "wall_time_s": 12.0, "stop_reason": stop, "dev": {"loss": min(losses), **dev},
                                         "convergence": convergence(entries, stop)})
    return folder


def test_training_summary_names_every_model_and_warns_about_a_capped_unconverged_one(tmp_path):
    lm = trained(tmp_path / "lm", "lm", "lm", "early_stopping", [5.0, 4.0, 3.9, 3.95, 3.96], {"perplexity": 49.4})
    mlm = trained(tmp_path / "mlm", "mlm", "mlm", "max_minutes", [6.0, 5.0, 4.0, 3.0], {"accuracy": 0.41})
    (tmp_path / "init").mkdir()  # the step-0 control: never trained, no summary, no line
    lines = training_summary([lm, mlm, tmp_path / "init"])
    assert lines[0] == "training:" and len(lines) == 4
    assert "lm seed 1: 500 steps" in lines[1] and "early_stopping" in lines[1] and "perplexity 49.4" in lines[1]
    assert "; converged" in lines[1]
    assert "mlm seed 1" in lines[2] and "max_minutes" in lines[2] and "NOT converged" in lines[2]
    assert lines[3].startswith("warning: 1 model(s)") and "mlm seed 1 (max_minutes)" in lines[3]
    # all converged: no warning; nothing trained: nothing said
    assert not any(line.startswith("warning") for line in training_summary([lm]))
    assert training_summary([tmp_path / "init"]) == []
