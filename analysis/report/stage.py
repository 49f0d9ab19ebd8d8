"""The experiment's report: one self-contained HTML page.

    python -m analysis.report experiment=default [overrides]

Reads everything under `paths.results` (the metric tables, every model's summary and training log,
the data / tokenizer / dump records, Snakemake's benchmark files; `analysis.report.gather`), checks the
study's claims against the tables (`analysis.report.claims`), draws the figures (`analysis.report.figures`) and
writes `<paths.report>/report.html` atomically. Any input may be missing: its section then says
"not measured" and why. Settings: `analysis.report` in conf/analysis/default.yaml.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from analysis.io.tables import read_table, write_table
from analysis.report import claims, gather
from analysis.report.claims import check_all
from analysis.report.criteria import Criteria
from analysis.report.html import (
    Section,
    details,
    esc,
    figure,
    key_values,
    not_measured,
    note,
    page,
    para,
    pre,
    table,
    verdict_cell,
)
from analysis.report.provenance import provenance_section
from analysis.stats import verdicts
from pipeline.config import layout
from pipeline.config.analysis import SPECS, setting
from pipeline.config.cli import cli
from pipeline.config.compose import to_plain
from pipeline.config.grid import INIT
from pipeline.config.layout import table_path
from pipeline.config.pretrained import SEED as PRETRAINED_SEED
from pipeline.config.stages import report_config
from pipeline.dump.format import MASKED_DIR, META_FILE
from pipeline.errors import PipelineError
from pipeline.records.files import config_hash, recording, write_text
from pipeline.records.locks import one_writer
from pipeline.records.provenance import stage_command
from pipeline.records.stage import inputs_read, make_record, write_record
from pipeline.records.types import StageRecord
from pipeline.train.convergence import THRESHOLD as CONVERGED_BELOW

log = logging.getLogger("analysis.report")
REPORT_FILE = "report.html"
QUALITY = {"mt": ("BLEU", "bleu"), "lm": ("perplexity", "perplexity"), "mlm": ("masked accuracy", "accuracy")}


def report_path(cfg: DictConfig) -> Path:
    return Path(str(cfg.paths.report)) / REPORT_FILE


def check_settings(cfg: DictConfig) -> None:
    """Reject bad report settings before any work, naming the key."""
    for key in SPECS:
        if key.startswith("analysis.report."):
            setting(cfg, key)


# ---------------------------------------------------------------- setup

def setup_section(exp: gather.Experiment, style) -> Section:
    from analysis.report.figures import training_curves

    cfg = exp.cfg
    s = Section("setup", "Setup: corpus, models, training")
    trained = [o for o in exp.objectives if o != INIT and o not in exp.pretrained]
    if trained:
        s.add(para(f"One Transformer stack trained with each objective ({', '.join(trained)}); only the "
                   "objective differs: same data, vocabulary, architecture and initialisation per seed. "
                   "MT's encoder is analysed; LM and MLM are analysed whole. Layer 0 is embeddings + positions."))
    if exp.pretrained:
        pretrained_models(s, exp)
    if INIT in exp.objectives:
        s.add(para("The step-0 control, init: the untrained stack of each seed (what every objective of that "
                   "seed starts from), run with bidirectional attention and measured like a model. It shows "
                   "what the architecture and the initialisation alone give: grey dashed in the figures where "
                   "objectives are curves, in panels of its own elsewhere."))
    s.add("<h3>Corpus and vocabulary</h3>")
    if exp.data_stage is None:
        s.add(not_measured("the corpus", f"{exp.results / 'data' / 'stage.json'} not found (rule prepare)"))
    else:
        counts = exp.data_stage.get("counts", {})
        data = exp.data_stage.get("config", {}).get("data", {})
        s.add(key_values([("corpus", data.get("name")), ("archive sha256", exp.data_stage.get("archive_sha256")),
                          ("longest sentence (tokens)", data.get("max_len")), *sorted(counts.items())]))
    if exp.tokenizer_stage is not None:
        s.add(key_values([("vocabulary size", exp.tokenizer_stage.get("vocab_size")),
                          ("tokenizer training sentences", exp.tokenizer_stage.get("train_sentences"))]))
    if not trained:  # pretrained models only: nothing was trained here
        return s
    s.add("<h3>Objectives, seeds and model</h3>")
    seeds: dict[str, list[int]] = defaultdict(list)
    for run in exp.models:
        seeds[run.objective].append(run.seed)
    rows = []
    for objective, seed in exp.dumps:
        if objective == INIT:
            seeds[INIT].append(seed)
    for objective in [o for o in exp.objectives if o not in exp.pretrained]:
        metas = [exp.dumps.get((objective, seed)) for seed in seeds[objective]]
        tokens = sorted({m["n_tokens"] for m in metas if m and "n_tokens" in m})
        rows.append((objective, ", ".join(map(str, seeds[objective])),
                     sum(run.summary is not None for run in exp.models if run.objective == objective),
                     sum(m is not None for m in metas), ", ".join(f"{t:,}" for t in tokens) or "—"))
    s.add(table(("objective", "seeds", "models trained", "dumps", "probe tokens"), rows))
    s.add(key_values([(f"model.{k}", v) for k, v in to_plain(cfg.model).items()]))
    s.add("<h3>Dev quality</h3>")
    body = []
    for run in exp.models:
        if run.summary is None:
            body.append((run.objective, run.seed, "—", None, None, None, None, "not trained", None))
            continue
        sm, dev = run.summary, run.summary.get("dev", {})
        label, key = QUALITY.get(run.kind, ("dev accuracy", "accuracy"))
        body.append((run.objective, run.seed, label, dev.get(key), dev.get("loss"), sm.get("steps"),
                     sm.get("best_step"), sm.get("stop_reason"), sm.get("wall_time_s")))
    s.add(table(("objective", "seed", "quality", "value", "dev loss", "steps", "best step", "stopped by",
                 "wall time (s)"), body))
    missing = [f"{r.objective} seed {r.seed}" for r in exp.models if r.summary is None]
    if missing:
        s.add(note(f"Not trained yet (no summary.json): {', '.join(missing)}."))
    s.add(para("The study does not report dev quality numbers to compare with (it trained on WMT En–De)."))
    logs: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for run in exp.models:
        logs[run.objective][run.seed] = run.log
    made = training_curves(logs, style)
    if made is None:
        s.add(not_measured("training curves", "no model has a log.jsonl"))
    else:
        s.add(figure(made[0], made[1], "training curves",
                     "Training loss (dotted, mean since the previous evaluation) and dev loss (solid) per "
                     "evaluation; lighter lines: further seeds. Losses of different objectives are not comparable."))
    return s


def pretrained_models(s: Section, exp: gather.Experiment) -> None:
    """The pretrained models of the experiment: where each came from, what it is, what its dump kept."""
    s.add("<h3>Pretrained models</h3>")
    s.add(para("Pretrained Hugging Face models (pretrained.models), run over the same probe sentences with their "
               "own tokenizers and measured like the trained models. They differ from each other, and from the "
               "models trained here, in training data, size, vocabulary and architecture as well as in objective: "
               "a difference between them is not the objective's alone, and the comparison is not controlled as "
               "the study's is. Between models with different tokenizers, distances compare word-level states "
               "over the probe words all of them hold (§ Distances between tasks). The rows are each model's "
               "non-special tokens; layer 0 is its embedding output, layer L its last hidden state as "
               "output_hidden_states gives it (GPT-2: after its final layer norm)."))
    rows = []
    for label, meta in exp.pretrained.items():
        info = (meta or {}).get("pretrained") or {}
        if not info:
            rows.append((label, "—", "—", "not dumped", None, None, None, None, None, None, None))
            continue
        head = meta.get("head_next_token_accuracy")
        masked = gather._read_json(layout.dump_folder(exp.cfg, label, PRETRAINED_SEED) / MASKED_DIR / META_FILE)
        if masked is not None and masked.get("head_mask_accuracy") is not None:
            head = f"{masked['head_mask_accuracy']:.3f} masked ({masked.get('head_mask_n', '?'):,})"
        elif head is not None:
            head = f"{head:.3f} next token ({meta.get('head_next_token_n', '?'):,})"
        weights = info.get("weights") or []
        rows.append((label, info.get("name"), info.get("role"), info.get("source"),
                     info.get("revision"), ", ".join(w.get("file", "?") for w in weights) or "—",
                     meta.get("n_layers"), meta.get("d_model"), meta.get("model_dtype"),
                     f"{meta.get('n_sentences', 0):,} of {meta.get('n_probe_lines', 0):,} "
                     f"({meta.get('n_skipped_too_long', 0)} too long, {meta.get('unaligned_sentences', 0)} not "
                     "mapped to words)", head or "—"))
    s.add(table(("label", "model", "role", "source", "revision", "weights", "layers", "width", "dtype",
                 "probe sentences kept", "head accuracy (n)"), rows,
                caption="Each model's source folder and revision (a Hugging Face cache snapshot is named by its "
                        "commit; a local folder has none). Head accuracy: the model's own head on the probe "
                        "sentences (MLM: on the masked run's [MASK] rows; LM: the next token), a check that its "
                        "weights loaded as trained."))


# ---------------------------------------------------------------- the claims

def convergence_section(exp: gather.Experiment, style) -> Section:
    from analysis.report.figures import dev_loss_curves

    s = Section("convergence", "Did training converge?")
    s.add(para("The study trained until the dev loss stopped improving. A run has converged when early "
               "stopping ended it, or when the last quarter of its steps improved the best dev loss by less "
               f"than {100 * CONVERGED_BELOW:g}% (pipeline/train/convergence.py). A finding read from a model that "
               "has not converged may still change with more training: the claim table flags it."))
    runs = [run for run in exp.models if run.convergence is not None]
    if not runs:
        s.add(not_measured("convergence", "no model has a log.jsonl with dev losses"))
        return s
    made = dev_loss_curves([(run.objective, run.seed, run.log, run.convergence) for run in runs], style)
    s.add(figure(made[0], made[1], "dev loss per model",
                 "Dev loss per evaluation, one panel per model; shaded: the last quarter of its steps. Red title: "
                 "not converged."))
    body = []
    for run in exp.models:
        c = run.convergence
        if c is None:
            body.append((run.objective, run.seed, None, None, None, None, "—", "no log.jsonl"))
            continue
        change = c["last_quarter_improvement"]
        body.append((run.objective, run.seed, c["steps"], (run.summary or {}).get("stop_reason"), c["best_dev_loss"],
                     None if change is None else f"{100 * change:.2f}%", "yes" if c["converged"] else "NO",
                     c["reason"]))
    s.add(table(("objective", "seed", "steps", "stopped by", "best dev loss", "last-quarter improvement",
                 "converged", "why"), body))
    return s


def unconverged(exp: gather.Experiment, objectives) -> list[str]:
    """The models of `objectives` whose training did not converge (or cannot be told), as text."""
    out = []
    for run in exp.models:
        if run.objective not in objectives:
            continue
        c = run.convergence
        if c is None:
            out.append(f"{run.objective} seed {run.seed} (no dev-loss log)")
        elif not c["converged"]:
            change = c["last_quarter_improvement"]
            out.append(f"{run.objective} seed {run.seed} ("
                       + (f"last quarter improved the dev loss by {100 * change:.1f}%)" if change is not None
                          else f"{c['reason']})"))
    return out


def claims_section(exp: gather.Experiment, crit: Criteria, rows: list[dict[str, Any]]) -> Section:
    """The claim table, from the rows of metrics/claims.csv (`claims.claim_rows`)."""
    s = Section("claims", "The study and this run")
    by_claim: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_claim[int(row["claim"])].append(row)
    tally = {v: sum(group[0]["verdict"] == v for group in by_claim.values()) for v in claims.VERDICTS}
    s.add(para(f"The study's conclusions, each checked against this run's tables by fixed rules "
               f"(analysis/report/claims.py, analysis/stats/verdicts.py; every contrast in metrics/claims.csv): "
               f"{tally['holds']} hold, {tally['does not hold']} do not hold, {tally['inconclusive']} inconclusive, "
               f"{tally['not measured']} not measured. Every part of a claim is a set of contrasts (two layers of one "
               "model, two models of one seed at one layer, two buckets), each decided by the interval of the "
               "difference from paired bootstrap replicates (the same resampled probe sentences on both sides), "
               "Bonferroni-corrected over the contrasts the claim reads in one seed; a part holds only beyond those "
               "intervals in every seed, does not hold only when the opposite does in every seed, and is "
               "inconclusive otherwise. A claim on MI holds only on both the plug-in and the corrected MI. A small "
               "model on a small corpus need not reproduce every claim; none is hidden."))
    if exp.pretrained:
        s.add(note(f"The claims read the trained objectives mt, lm, mlm (and their variants) only; the pretrained "
                   f"models ({', '.join(exp.pretrained)}) are not read by them: their comparison is not controlled "
                   "(§ Setup). Their numbers are in the sections below."))
    known = {c.number: c for c in claims.CLAIMS}
    body, flagged_any = [], False
    for number, group in sorted(by_claim.items()):
        c, first = known.get(number), group[0]
        flagged = unconverged(exp, c.reads) if c else []
        flagged_any |= bool(flagged)
        training = (f'<span class="flag">not converged: {esc("; ".join(flagged))}</span>' if flagged
                    else "converged" if c and c.reads else "—")
        body.append((number, esc(first["statement"]), esc(c.study if c else ""), esc(first["numbers"]),
                     verdict_cell(first["verdict"]), training, esc(first["reason"])))
    s.add(table(("#", "claim", "the study", "this run (seed means)", "verdict", "models read", "why"), body, raw=True))
    if flagged_any:
        s.add(note("Some verdicts read models whose training had not converged (column \"models read\"; "
                   "section \"Did training converge?\"): they may change with longer training."))
    for number, group in sorted(by_claim.items()):
        lines = [r for r in group if r["contrast"] != ""]
        if lines:
            s.add(details(f"Claim {number}: its {len(lines)} contrasts (estimate, interval at level, outcome, n)",
                          table(("part", "seed", "contrast", "estimate", "interval", "level", "margin", "outcome", "n",
                                 "seed verdict", "part verdict"),
                                [(r["part"], r["seed"], r["contrast"], _num(r["estimate"]), _interval(r),
                                  _num(r["level"]), _num(r["margin"]), r["outcome"], r["n"], r["seed_verdict"],
                                  r["part_verdict"]) for r in lines])))
    doc = (claims.__doc__ or "").strip()
    criteria = doc[doc.find("1. "):] if "1. " in doc else doc
    rules_doc = (verdicts.__doc__ or "").strip()
    s.add(details("How each verdict is decided", pre(rules_doc[rules_doc.find("A *contrast*"):] + "\n\n" + criteria)))
    s.add(key_values([("MI tolerance (nats)", crit.mi_tolerance), ("change tolerance", crit.change_tolerance),
                      ("MT keeps most identity: share of layer-0 MI", crit.mt_keep_share),
                      ("token dropout excess factor", crit.dropout_excess_factor),
                      ("measure", crit.measure), ("MI clusters (main estimate)", crit.n_clusters),
                      ("neighbours k, metric", f"{crit.k}, {crit.metric}"),
                      ("bootstrap level, method (before the Bonferroni correction)", f"{crit.level}, {crit.method}")]))
    return s


def _num(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if value != value else f"{value:.4g}"


def _interval(row: dict[str, Any]) -> str:
    low, high = _num(row["ci_low"]), _num(row["ci_high"])
    return "—" if low == "—" else f"[{low}, {high}]"


def claim_table(cfg: DictConfig, exp: gather.Experiment, crit: Criteria, out: Path | None) -> list[dict[str, Any]]:
    """The rows of metrics/claims.csv: checked now, written to `out` (with its record) and read back from
    it, so that the page shows what the file holds; in memory only when `out` is None."""
    rows = claims.claim_rows(check_all(exp.as_tables(), crit))
    if out is None:
        return rows
    write_table(out, "claims", rows, {"claims": to_plain(cfg.analysis.report.claims),
                                      "bootstrap": to_plain(cfg.analysis.bootstrap),
                                      "mi_clusters": crit.n_clusters, "neighbours": [crit.k, crit.metric]})
    return read_table(out, "claims")


# ---------------------------------------------------------------- the page

def build(cfg: DictConfig, probe_hardware: bool = True, claims_out: Path | None = None) -> str:
    """The report's HTML for `cfg`'s experiment; `claims_out`: where to write metrics/claims.csv, which the
    claim table is then read from (None: checked in memory)."""
    from analysis.report import interactive

    check_settings(cfg)
    live = interactive.LIVE.set(bool(cfg.analysis.report.get("interactive", True)))
    try:
        return _page(cfg, probe_hardware, claims_out)
    finally:
        interactive.LIVE.reset(live)


def _page(cfg: DictConfig, probe_hardware: bool, claims_out: Path | None) -> str:
    from analysis.report import plotting
    from analysis.report.evolution import evolution_section
    from analysis.report.sections import mi_section, similarity_section
    from analysis.report.sections_readout import readout_section
    from analysis.report.sections_tokens import change_section, influence_section, neighbours_section, tsne_section

    style = plotting.Style(str(cfg.analysis.report.figure_format), int(cfg.analysis.report.dpi))
    exp = gather.collect(cfg, probe_hardware=probe_hardware)
    crit = Criteria.from_cfg(cfg)
    rows = claim_table(cfg, exp, crit, claims_out)
    sections = [setup_section(exp, style), convergence_section(exp, style), claims_section(exp, crit, rows),
                mi_section(exp, style, crit), readout_section(exp, style, crit), similarity_section(exp, style, crit),
                change_section(exp, style, crit), influence_section(exp, style, crit),
                neighbours_section(exp, style, crit), tsne_section(exp, style), evolution_section(exp, style, crit)]
    sections.append(provenance_section(exp))
    measured = sum(t.rows is not None for t in exp.tables.values())
    # The page is a function of its inputs (a rerun writes the same bytes): dated by its newest input.
    finished = max((str((t.record or {}).get("finished")) for t in exp.tables.values() if t.record), default=None)
    subtitle = (f"Experiment {cfg.experiment_name}: {len(exp.models)} models, {measured} of {len(exp.tables)} "
                f"metric tables; {f'tables finished by {finished}' if finished else 'no table finished yet'}. Reproduces Voita, Sennrich and Titov "
                "(EMNLP 2019), The Bottom-up Evolution of Representations in the Transformer.")
    return page(f"The bottom-up evolution of representations: {cfg.experiment_name}", subtitle, sections)


def run(cfg: DictConfig) -> Path:
    """Write `<paths.report>/report.html` for `cfg`'s experiment; returns its path."""
    started = time.perf_counter()
    if not Path(str(cfg.paths.results)).is_dir():
        raise PipelineError(f"paths.results={cfg.paths.results} does not exist: run the workflow first "
                            "(snakemake --cores N), or set experiment=/paths.results= to a finished run")
    text = build(cfg, claims_out=table_path(cfg, "claims"))
    out = report_path(cfg)
    # its record beside it: the tables it read (their recorded hashes) and the page's size and sha256
    with one_writer(out):
        with recording(out.parent) as ledger:
            write_text(out, text)
        write_record(out.with_suffix(".json"), make_record(
            StageRecord, out.parent, {out.name: ledger.files[out.name]}, inputs_read(), None, stage="report",
            config_hash=config_hash(report_config(cfg)), command=stage_command("analysis.report")))
    log.info("wrote %s (%.0f kB) in %.1f s", out, len(text.encode()) / 1024,
             time.perf_counter() - started)
    return out


main = cli(run)

if __name__ == "__main__":
    main()
