"""The report's section on what each layer already predicts: the logit lens (analysis/measures/readout.py's
table `readout`), each layer's states read through the model's own final norm and output head, drawn beside
the MI with the output label on the same layer axis and in the same model colours as the MI section."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from analysis.report import figures, plotting
from analysis.report.criteria import Criteria
from analysis.report.estimates import main_clusters
from analysis.report.gather import Experiment, _read_json
from analysis.report.html import Section, not_measured, para, table
from analysis.report.sections import BAND_NOTE, add_figure, ordered_models, table_rows
from pipeline.config.grid import INIT, model_grid
from pipeline.config.layout import part_path

TITLE = "What each layer already predicts (logit lens)"
QUANTITIES = ("loss", "accuracy", "kl")
READ_KINDS = ("lm", "mlm")  # the kinds whose dump holds a readout (pipeline.plan.READOUT_KINDS)
TARGETS = {"next": "the next token", "masked": "the original token at the masked positions"}
# Why a model of a kind the lens cannot read has no rows (pipeline/dump/readout.py says the same in meta.json).
NO_HEAD = {"mt": "an MT encoder has no output head of its own (the decoder's head reads the target side, not "
                 "the encoder's states)",
           INIT: "the step-0 control's head is untrained: what its layers would predict through it says nothing"}


def model_kind(exp: Experiment, label: str) -> str:
    """mt | lm | mlm | init: a pretrained model's role, a trained model's kind (its summary's, else its name's)."""
    if label == INIT:
        return INIT
    if label in exp.pretrained:
        return str(((exp.pretrained[label] or {}).get("pretrained") or {}).get("role") or "unknown")
    run = next((m for m in exp.models if m.objective == label), None)
    return run.kind if run is not None else label.split("_")[0]


def _why_missing(exp: Experiment) -> str:
    """Why the whole table is absent: the readout switched off, no LM or MLM model, or the table's own reason."""
    if OmegaConf.select(exp.cfg, "dump.readout", default=True) is False:
        return "dump.readout is false, so the dumps hold no readout to average."
    if not any(model_kind(exp, o) in READ_KINDS for o, _ in model_grid(exp.cfg)):  # the models the workflow runs
        return ("the experiment has no LM or MLM model: " + "; ".join(NO_HEAD.values()) + ". (dump.readout false "
                "or no LM/MLM model: no readout table is made.)")
    return f"{exp.tables['readout'].missing} (dump.readout false or no LM/MLM model: no readout table is made)."


def _why_absent(exp: Experiment, label: str) -> str:
    """Why one model has no rows: its part's record, its kind, its dump's meta.json, in that order."""
    seeds = sorted(s for o, s in exp.dumps if o == label) or [None]
    for seed in seeds:
        if seed is not None:
            record = _read_json(part_path(exp.cfg, "readout", label, seed).with_suffix(".json")) or {}
            if record.get("not_measured"):
                return str(record["not_measured"])
    kind = model_kind(exp, label)
    if kind in NO_HEAD:
        return NO_HEAD[kind]
    for seed in seeds:
        why = ((exp.dumps.get((label, seed)) or {}).get("readout") or {}).get("why")
        if why and why != "in masked/":
            return str(why)
    return "no rows in metrics/readout.csv (its dump holds no readout: dumped with dump.readout=false, or a head " \
           "the dump could not read)"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    low, high = float(r.get("ci_low", math.nan)), float(r.get("ci_high", math.nan))
    interval = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{float(r['value']):.3f}{interval}"


def readout_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("readout", TITLE)
    s.add(para("The logit lens: every layer's states read through the model's own final norm and output head, as "
               "if that layer were the last (pipeline/dump/readout.py). Per layer: the mean cross-entropy of the "
               "target (loss, nats), the share of rows whose target is the most likely token (top-1 accuracy), and "
               "the mean KL divergence from the last layer's prediction to the layer's (nats; 0 at the last layer). "
               "The target is that of the output label of the MI section: LM the next token, MLM the original token "
               "where the masked run masked or replaced it. MI asks how much the layer's clusters tell about the "
               "label; the lens asks whether the model's own head can already read it off the layer."))
    if exp.rows("readout") is None:
        s.add(not_measured("the logit-lens readout", "The readout was not measured: " + _why_missing(exp)))
        return s
    every = table_rows(s, exp, "readout", "the logit-lens readout") or []
    rows = [r for r in every if r.get("lens", "logit") in ("logit", "", None)]
    models = ordered_models(exp, {r["objective"] for r in rows})
    quantities = [q for q in QUANTITIES if any(r["quantity"] == q for r in rows)]
    quantities += sorted({r["quantity"] for r in rows} - set(quantities))
    mi = exp.rows("mi")
    k = main_clusters(mi, crit) if mi else None
    add_figure(s, figures.readout_panels(rows, mi, models, quantities, k, style),
               "logit lens per layer beside the MI with the output label",
               f"Left: corrected MI with the output label ({k} clusters, as in the MI section)"
               + ("" if mi else ": not measured") + "; then the logit lens per layer: loss of the target, top-1 "
               f"accuracy, KL to the last layer. Same layer axis and model colours as the MI section; {BAND_NOTE}.")
    for label in [o for o in exp.objectives if o not in models]:
        s.add(not_measured(f"readout of {label}", _why_absent(exp, label)))
    sizes = []
    for o, seed in sorted({(r["objective"], r["seed"]) for r in rows}, key=lambda m: (models.index(m[0]), m[1])):
        mine = [r for r in rows if r["objective"] == o and r["seed"] == seed]
        targets = sorted({r["target"] for r in mine})
        ns = sorted({(r["n_tokens"], r["n_sentences"]) for r in mine})
        sizes.append(f"{o} seed {seed}: " + ", ".join(f"{n:,} targets ({', '.join(TARGETS.get(t, t) for t in targets)})"
                                                       f" in {m:,} probe sentences" for n, m in ns))
    s.add(para("Sample sizes (every layer and quantity of a model is averaged over the same target rows): "
               + "; ".join(sizes) + ". Intervals: bootstrap over probe sentences (analysis.bootstrap: level "
               f"{OmegaConf.select(exp.cfg, 'analysis.bootstrap.level', default='?')}, method "
               f"{OmegaConf.select(exp.cfg, 'analysis.bootstrap.method', default='?')})."))
    s.add(table(("model", "seed", "target", "layer", *(f"{q} [interval]" for q in quantities), "n tokens / sentences"),
                _body(rows, models, quantities), caption="The logit lens per layer (KL: to the last layer)"))
    tuned = [r for r in every if r.get("lens") == "tuned" and r["objective"] in models]
    if tuned:
        fitted = OmegaConf.select(exp.cfg, "dump.tuned_lens", default="?")
        s.add(para(f"The tuned lens (dump.tuned_lens = {fitted} training sentences; pipeline/dump/tuned_lens.py): "
                   "each layer's states first mapped by an affine map fitted by least squares to the last layer's "
                   "states on training sentences (never the probe), then read as the last layer is. Where it reads "
                   "more than the logit lens, the layer holds the target in a basis the head does not read."))
        add_figure(s, figures.readout_panels(tuned, mi, models, quantities, k, style),
                   "tuned lens per layer beside the MI with the output label",
                   f"As above, through the tuned lens; {BAND_NOTE}.")
        s.add(table(("model", "seed", "target", "layer", *(f"{q} [interval]" for q in quantities),
                     "n tokens / sentences"), _body(tuned, models, quantities),
                    caption="The tuned lens per layer (KL: to the last layer's own distribution)"))
    return s


def _body(rows: Sequence[dict[str, Any]], models: list[str], quantities: Sequence[str]) -> list[tuple]:
    cells = {(r["objective"], r["seed"], r["target"], r["layer"], r["quantity"]): r for r in rows}
    keys = sorted({(r["objective"], r["seed"], r["target"], r["layer"]) for r in rows},
                  key=lambda key: (models.index(key[0]), *key[1:]))
    body = []
    for key in keys:
        found = [cells.get((*key, q)) for q in quantities]
        first = next(r for r in found if r is not None)
        body.append((*key, *(_cell(r) for r in found), f"{first['n_tokens']:,} / {first['n_sentences']:,}"))
    return body
