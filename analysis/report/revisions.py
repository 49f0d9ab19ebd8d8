"""The pretrained grid models of the evolution section (pretrained.models.<label>.revisions: a model's
published training checkpoints, each dumped as a snapshot and measured against its final revision): the
names of their revisions, for the points' labels, and the check of analysis/measures/revisions.py (table
`revisions`): per grid model a table of its revisions and a warning naming every revision whose weights,
or hidden states on the probe, equal another's, since their measurements are then not two points of
training.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from analysis.report.gather import Experiment
from analysis.report.html import Section, esc, not_measured, para, table
from pipeline.config.pretrained import step_of

Model = tuple[str, int]  # (label, seed): a family publishing its seeds (MultiBERTs) has a grid per seed


def grid_models(exp: Experiment, rows: Sequence[Mapping[str, Any]] | None = None) -> list[Model]:
    """(label, seed) of the pretrained models with a grid of revisions: every seed of those whose settings
    name revisions, and those with rows in the revisions table or (being pretrained) in the evolution rows
    `rows`; in the experiment's order of pretrained models, then by seed."""
    found = {(label, seed) for label, spec in exp.grids.items() for seed in spec.seeds}
    found |= {(r["objective"], r["seed"]) for r in _rows(exp) or ()}
    found |= {(r["objective"], r["seed"]) for r in rows or () if r["objective"] in exp.pretrained}
    order = [*exp.pretrained, *exp.grids]
    return sorted(found, key=lambda m: (order.index(m[0]) if m[0] in order else len(order), m[0], m[1]))


def _of_seed(name: str | None, seed: int) -> str | None:
    return None if name is None else name.replace("{seed}", str(seed))


def revision_names(exp: Experiment) -> dict[Model, tuple[dict[int, str], str | None]]:
    """Per grid model ({step: revision name} of its grid points, the name of its final revision; None: its
    repository's default revision): from its settings (`{seed}` filled in), and from the revisions table
    where it has rows (what was measured)."""
    out = {(label, seed): ({step: _of_seed(name, seed) for step, name in spec.revisions}, _of_seed(spec.revision, seed))
           for label, spec in exp.grids.items() for seed in spec.seeds}
    for r in _rows(exp) or ():
        steps, final = out.setdefault((r["objective"], r["seed"]), ({}, None))
        if r["final"]:
            out[(r["objective"], r["seed"])] = (steps, r["revision"] or final)
        elif r["revision"]:
            steps[r["step"]] = r["revision"]
    return out


def shown_name(step: int, name: str | None) -> str | None:
    """`name` where it adds to the step (`main`, `stage1-b` at step 5), None where it only repeats it
    (`step20000`, `stage1-step20000-tokens84B` at step 20000) or there is none."""
    return None if not name or step_of(name) == step else name


def shown(row: Mapping[str, Any], names: Mapping[int, str] | None = None) -> str:
    """A revision as the report names it: its name, else (a repository's default revision, which the
    table leaves empty) the setting's name for its step, else its step."""
    return row["revision"] or (None if int(row["final"]) else (names or {}).get(row["step"])) or f"step {row['step']}"


def warnings_of(rows: Sequence[Mapping[str, Any]], names: Mapping[int, str] | None = None) -> list[str]:
    """One line per revision of one model whose weights, or hidden states on the probe, are those of an
    earlier one (in step order, the final revision last), naming both; a pair is named once, by its later
    revision. Read from the hashes themselves (what the table's same_weights_as / same_states_as name), so
    that a revision without a name is flagged too."""
    ordered = sorted(rows, key=lambda r: (int(r["final"]), r["step"]))
    said_as = [shown(r, names) for r in ordered]
    lines = []
    for i, r in enumerate(ordered):
        weights = [said_as[j] for j in range(i) if ordered[j]["weights_sha256"] == r["weights_sha256"]]
        states = [said_as[j] for j in range(i) if ordered[j]["states_sha256"] == r["states_sha256"]]
        states_only = [n for n in states if n not in weights]
        name = said_as[i] + (" (the final revision)" if int(r["final"]) else "")
        said = []
        if weights:
            both = set(weights) <= set(states)
            said.append(f"{name} has the same weights as {', '.join(weights)}"
                        + (" (and so the same hidden states on the probe)" if both else ""))
        if states_only:
            said.append(f"{name} has the same hidden states on the probe as {', '.join(states_only)}, though its "
                        "weight files differ")
        if said:
            lines.append("; ".join(said) + ": their measurements are not two points of training")
    return lines


def revisions_block(s: Section, exp: Experiment, models: Sequence[Model]) -> None:
    """The revisions' check of every grid model of `models` (nothing when there is none)."""
    if not models:
        return
    s.add("<h3>Published revisions: are they what their names say?</h3>")
    s.add(para("A release's step branches are sometimes not what their names say (EleutherAI/pythia #195 and #205, "
               "allenai/OLMo #915: branches with the weights, or the hidden states, of another). Each revision's "
               "dump records the sha256 of its weight files and of every layer file it wrote; "
               "analysis/measures/revisions.py compares them within each grid model (metrics/revisions.csv). "
               "Commit: the Hugging Face snapshot the revision resolved to; states: one hash over the layer files "
               "of its dump on the probe."))
    found = exp.tables.get("revisions")
    rows = found.rows if found is not None else None
    if rows is None:
        s.add(not_measured("the revisions' check", (found.missing if found is not None else None)
                           or "metrics/revisions.csv was not read"))
        return
    names = revision_names(exp)
    for label, seed in models:
        model = f"{label} seed {seed}"
        mine = sorted((r for r in rows if r["objective"] == label and r["seed"] == seed),
                      key=lambda r: (int(r["final"]), r["step"]))
        if not mine:
            s.add(not_measured(f"the revisions of {model}", f"metrics/revisions.csv has no row of {model}: make "
                                                            "it again (python -m analysis.measures.revisions)"))
            continue
        steps, _ = names.get((label, seed), ({}, None))
        body = [(f"{r['step']} (final)" if int(r["final"]) else r["step"], shown(r, steps), _short(r["commit"], 10),
                 _short(r["weights_sha256"], 12), _short(r["states_sha256"], 12), r["same_weights_as"] or "—",
                 r["same_states_as"] or "—") for r in mine]
        s.add(table(("step", "revision", "commit", "weights sha256", "states sha256", "same weights as",
                     "same states as"), body, caption=f"{model}: its {len(mine)} revisions"))
        lines = warnings_of(mine, steps)
        if lines:
            items = "".join(f"<li>{esc(line)}.</li>" for line in lines)
            s.add(f'<div class="note"><p><strong class="flag">Warning: {esc(model)} has revisions that are the same '
                  f"as another ({len(lines)}).</strong> Their points in the figures and tables below repeat one "
                  f"state of training under two steps:</p><ul>{items}</ul></div>")
        else:
            s.add(para(f"{model}: every revision's weights and states differ from every other revision's "
                       f"({len(mine)} revisions): each is a state of training of its own."))


def _rows(exp: Experiment) -> list[dict[str, Any]] | None:
    found = exp.tables.get("revisions")
    return found.rows if found is not None else None


def _short(text: Any, n: int) -> str:
    text = str(text or "")
    return text[:n] if text else "—"
