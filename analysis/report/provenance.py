"""The report's provenance section: what made each result (versions, commands, settings hashes) and how long each stage took."""
from __future__ import annotations

from collections import defaultdict

from omegaconf import OmegaConf

from analysis.report import gather
from analysis.report.html import Section, details, key_values, not_measured, note, para, pre, table
from pipeline.config.stages import report_config
from pipeline.records.files import config_hash
from pipeline.records.provenance import versions

_STAGE_ORDER = ("prepare", "train", "dump", "similarity", "change", "influence", "mi", "neighbours", "tsne",
                "examples")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _wall_times(exp: gather.Experiment) -> list[tuple]:
    """Per stage (rule): jobs, summed wall time (s and h:m:s), longest job, peak RSS (MB)."""
    stages: dict[str, list[gather.BenchmarkJob]] = defaultdict(list)
    for job in exp.benchmarks:
        if job.stage != "report":  # an earlier run's of this page: it would make each rerun differ
            stages[job.stage].append(job)
    rank = {name: i for i, name in enumerate(_STAGE_ORDER)}
    other, rank["report"] = len(_STAGE_ORDER), len(_STAGE_ORDER) + 1  # merge_<table> etc. sort by name before it
    rows = []
    for stage in sorted(stages, key=lambda name: (rank.get(name, other), name)):
        secs = [j.seconds for j in stages[stage] if j.seconds is not None]
        rss = [j.max_rss_mb for j in stages[stage] if j.max_rss_mb is not None]
        total = sum(secs) if secs else None
        rows.append((stage, len(stages[stage]), total, _clock(total), max(secs) if secs else None,
                     max(rss) if rss else None))
    return rows


def _settings_hashes(record: dict) -> str | None:
    """The settings hash of a table: its own, or for a merged table those of its per-model parts."""
    if record.get("parts"):
        return ", ".join(sorted({str(p.get("config_hash")) for p in record["parts"]}))
    return record.get("config_hash")


def provenance_section(exp: gather.Experiment) -> Section:
    import matplotlib

    s = Section("provenance", "Provenance")
    found = versions()
    found["matplotlib"] = matplotlib.__version__
    s.add("<h3>Code and environment</h3>")
    s.add(key_values([("git commit", found.pop("git_commit", None) or "unknown (not a git checkout)"),
                      *sorted(found.items())]))
    commits = defaultdict(list)
    records = [("data", exp.data_stage), ("tokenizer", exp.tokenizer_stage),
               *((f"metrics/{t.name}.csv", t.record) for t in exp.tables.values())]
    for name, record in records:
        if record and (record.get("versions") or {}).get("git_commit"):
            commits[record["versions"]["git_commit"]].append(name)
    if len(commits) > 1:
        s.add(note("The inputs were made at different commits: "
                   + "; ".join(f"{c[:10]}: {', '.join(n)}" for c, n in commits.items())))
    s.add("<h3>Hardware</h3>")
    hw = exp.hardware
    s.add(key_values([("CPU (this report's machine)", hw.get("cpu")), ("cores", hw.get("cores")),
                      ("RAM (GiB)", hw.get("ram_gib")), ("GPU", hw.get("gpu")), ("platform", hw.get("platform")),
                      ("training devices", ", ".join(sorted({str(r.summary.get("device")) for r in exp.models
                                                             if r.summary})) or "—")]))
    s.add("<h3>Wall time</h3>")
    stages = _wall_times(exp)
    if stages:
        total = sum(r[2] or 0 for r in stages)
        s.add(table(("stage (rule)", "jobs", "wall time (s)", "h:m:s", "longest job (s)", "peak RSS (MB)"),
                    [*stages, ("total", sum(r[1] for r in stages), total, _clock(total), None, None)]))
        s.add(para(f"Total: {total / 3600:.2f} h of job wall time (the sum over jobs; jobs that ran in parallel "
                   "overlap). From Snakemake's benchmark files under benchmarks/."))
    else:
        s.add(not_measured("wall time per stage", f"no benchmark files under {exp.results / 'benchmarks'}"))
    made = [(f"metrics/{t.name}.csv", len(t.rows or ()), (t.record or {}).get("finished"),
             _settings_hashes(t.record or {}), (t.record or {}).get("wall_time_s"))
            for t in exp.tables.values() if t.rows is not None]
    if made:
        s.add(table(("metric table", "rows", "finished", "settings hash", "wall time in its record (s)"), made))
    recorded = [(f"train {r.objective} seed {r.seed}", r.summary.get("wall_time_s")) for r in exp.models if r.summary]
    for t in exp.tables.values():
        times = [p.get("wall_time_s") for p in (t.record or {}).get("parts") or [] if p.get("wall_time_s") is not None]
        if times:
            recorded.append((f"{t.name}: its {len(times)} per-model parts", sum(times)))
    if recorded:
        total = sum(seconds or 0 for _, seconds in recorded)
        s.add(para(f"Training and measurement time the stages recorded themselves: {_clock(total)} "
                   f"({total:,.0f} s; without data preparation, dumps and Snakemake's overhead)."))
    s.add(details("Wall times the stages recorded themselves (s)", table(("what", "wall time (s)"), recorded)))
    missing = [f"metrics/{t.name}.csv: {t.missing}" for t in exp.tables.values() if t.missing]
    if missing:
        s.add(details(f"Inputs not found ({len(missing)})", pre("\n".join(missing))))
    s.add("<h3>Resolved configuration</h3>")
    s.add(para(f"config hash {config_hash(report_config(exp.cfg))}"))
    s.add(details("config.yaml (resolved)", pre(OmegaConf.to_yaml(exp.cfg, resolve=True))))
    return s
