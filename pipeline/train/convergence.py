"""Did a training run converge? Computed from its dev-loss log alone.

A run has converged when early stopping ended it (the dev loss stopped improving for
`train.patience` evaluations), or when the last quarter of its training improved the best dev loss
by less than `threshold` (1% by default) of the best dev loss reached by the start of that quarter.
A run whose dev loss still falls at the end is *not* converged, whatever its stop reason.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # type names only: reading a log imports neither torch nor omegaconf
    from omegaconf import DictConfig

    from pipeline.train.steps import TrainState

log = logging.getLogger(__name__)

THRESHOLD = 0.01  # the last quarter must improve the best dev loss by less than this share


def read_log(folder) -> list[dict]:
    """The entries of a training run's log.jsonl (one per evaluation). A last line cut short (the
    disk filled, the power went while it was appended) is dropped with a warning: the run's
    checkpoint, written after it, is older than it, so a resumed run writes it again. A damaged line
    before the last is an error naming the file and the line."""
    path = Path(folder) / "log.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or "step" not in entry:
                raise ValueError("not an evaluation's entry (a JSON object with a step)")
        except ValueError as error:
            if number == len(lines):
                log.warning("%s: line %d is cut short (%s); it is dropped", path, number, str(error)[:120])
                break
            raise PipelineError(f"{path}, line {number}: not a log entry ({str(error)[:120]}); the lines after it "
                                "are whole, so it was not a cut-short write: look at the file") from None
        entries.append(entry)
    return entries


def convergence(entries: list[dict], stop_reason: str | None = None, threshold: float = THRESHOLD) -> dict:
    """{converged, last_quarter_improvement, reason, steps, best_dev_loss} of a run's log entries
    (dicts with `step` and `dev_loss`, in step order).

    last_quarter_improvement: (best dev loss up to step 0.75 * S - best dev loss up to S) / the
    former, S the last logged step; the best up to a step is the lowest dev loss of the evaluations
    at or before it. With fewer than two evaluations nothing can be said: not converged."""
    entries = sorted((e for e in entries if math.isfinite(float(e.get("dev_loss", math.nan)))),
                     key=lambda e: e["step"])
    if len(entries) < 2:
        return {"converged": False, "last_quarter_improvement": None, "reason": "fewer than two evaluations",
                "steps": entries[-1]["step"] if entries else 0, "best_dev_loss": None}
    last = entries[-1]["step"]
    cut = 0.75 * last
    before = [e["dev_loss"] for e in entries if e["step"] <= cut]
    if not before:  # the first evaluation came after three quarters of training: compare with it
        before = [entries[0]["dev_loss"]]
    best_before, best_end = min(before), min(e["dev_loss"] for e in entries)
    improvement = (best_before - best_end) / abs(best_before) if best_before else 0.0
    if stop_reason == "early_stopping" and improvement >= threshold:
        # patience ran out, but the best came late: said, so that a reader can tell a short stall
        # of a still-falling curve from a long flat end
        converged, reason = True, (f"early stopping; its last quarter had improved the dev loss by "
                                   f"{100 * improvement:.2f}%")
    elif stop_reason == "early_stopping":
        converged, reason = True, "early stopping"
    elif improvement < threshold:
        converged, reason = True, f"last quarter improved the dev loss by {100 * improvement:.2f}% (< {100 * threshold:g}%)"
    else:
        converged, reason = False, f"dev loss still falling: last quarter improved it by {100 * improvement:.2f}%"
    return {"converged": converged, "last_quarter_improvement": improvement, "reason": reason,
            "steps": last, "best_dev_loss": best_end}


def model_convergence(folder, threshold: float = THRESHOLD) -> dict:
    """convergence() of the trained model in `folder` (its log.jsonl and summary.json)."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    stop = json.loads(summary_path.read_text()).get("stop_reason") if summary_path.exists() else None
    return convergence(read_log(folder), stop, threshold)


def stop_reason(state: TrainState, out: Path, tcfg: DictConfig, out_of_time: bool) -> str | None:
    """Why training stops at `state` (an evaluation's), or None: the rules in the order they are told."""
    if state.step >= int(tcfg.max_steps):
        return "max_steps"
    if state.bad_evals >= int(tcfg.patience):
        return "early_stopping"
    if plateaued(out, tcfg):
        return "plateau"
    if out_of_time:
        return "max_minutes"
    return None


def plateaued(out: Path, tcfg: DictConfig) -> bool:
    """The dev loss has plateaued by `pipeline.train.convergence`'s rule (its last quarter improved it by
    less than 1%), checked once the log holds `train.plateau_min_evals` evaluations (null: never),
    so that a flat stretch early in training does not end it."""
    least = tcfg.get("plateau_min_evals")
    if least is None:
        return False
    entries = read_log(out)
    return len(entries) >= int(least) and bool(convergence(entries)["converged"])


QUALITY = {"mt": ("BLEU", "bleu", "{:.1f}"), "lm": ("perplexity", "perplexity", "{:.1f}"),
           "mlm": ("masked accuracy", "accuracy", "{:.3f}")}


def training_summary(folders) -> list[str]:
    """The workflow's closing lines on training: one per trained model of `folders` (those with a
    summary.json), its steps, why it stopped, dev quality and convergence; then, when any model
    ended before its dev loss plateaued, a warning that names them and what stopped them (a cap
    is a safety net: a model it stops is not the converged model the study's claims assume)."""
    lines, unconverged = [], []
    for folder in map(Path, folders):
        path = folder / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        name, key, fmt = QUALITY.get(s.get("kind"), ("", "", ""))
        quality = f", {name} {fmt.format(s['dev'][key])}" if key in s.get("dev", {}) else ""
        conv = s.get("convergence") or model_convergence(folder)
        verdict = "converged" if conv.get("converged") else "NOT converged"
        lines.append(f"  {s['objective']} seed {s['seed']}: {s['steps']:,} steps in {s['wall_time_s']:,.0f} s, "
                     f"stopped by {s['stop_reason']}, dev loss {s['dev']['loss']:.3f}{quality}; {verdict} "
                     f"({conv.get('reason')})")
        if not conv.get("converged"):
            unconverged.append(f"{s['objective']} seed {s['seed']} ({s['stop_reason']})")
    if not lines:
        return []
    out = ["training:", *lines]
    if unconverged:
        out.append(f"warning: {len(unconverged)} model(s) stopped before their dev loss plateaued: "
                   f"{', '.join(unconverged)}. Their measurements describe unconverged models; raise "
                   "train.max_minutes or train.max_steps and run again (a changed budget trains them anew).")
    return out
