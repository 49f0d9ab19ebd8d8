"""The house: where every path lies (pipeline/config/layout.py), the model's label and its older
spelling, the typed records against the JSON on disk, every command of the README, and the rules of
ARCHITECTURE.md (which folder may import which, no circle, no file over 400 lines)."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import layout
from pipeline.config.compose import compose
from pipeline.records.provenance import rebased_command
from pipeline.records.stage import read_record, stage_problem
from pipeline.records.types import Output, Record, StageRecord, TableRecord

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- one home for every path

def test_the_layout_resolves_conf_paths_for_any_model_seed_and_wildcard():
    cfg = compose(["experiment=smoke", "objective=lm", "seed=2"])
    assert layout.dump_folder(cfg) == Path(str(cfg.paths.dump)) == Path("results/smoke/dumps/lm/seed2")
    assert layout.model_file(cfg, "mt", 1) == Path("results/smoke/models/mt/seed1/model.pt")
    assert layout.snapshot_dump(cfg, 50, "mlm", 1) == Path("results/smoke/snapshots/mlm/seed1/step50")
    assert layout.snapshot_file(cfg, 50) == Path("results/smoke/models/lm/seed2/snapshots/step50.pt")
    assert layout.part_path(cfg, "mi") == Path("results/smoke/metrics/mi/lm/seed2.csv")
    assert layout.evolution_part(cfg, layout.point_name(None), "mt", 1) == \
        Path("results/smoke/metrics/evolution/mt/seed1/final.csv")
    # the workflow's patterns come back with their wildcards, and cfg is left as it was
    assert str(layout.dump_folder(cfg, "{objective}", "{seed}")) == "results/smoke/dumps/{objective}/seed{seed}"
    assert (cfg.label, cfg.seed) == ("lm", 2)
    # a folder moved by its setting moves for every model
    moved = compose(["experiment=smoke", "paths.dump=/elsewhere/${label}-${seed}"])
    assert layout.dump_folder(moved, "bert", 0) == Path("/elsewhere/bert-0")


def test_a_layout_that_would_put_every_model_in_one_folder_is_refused():
    from pipeline.errors import PipelineError
    from pipeline.plan import Plan

    with pytest.raises(PipelineError, match=r"paths.dump=.*must name the model"):
        Plan("smoke", ["paths.dump=results/one-folder/seed${seed}"])


# ---------------------------------------------------------------- one vocabulary

def test_a_pretrained_models_label_is_its_own_setting_and_the_older_spelling_still_reads():
    base = ["experiment=pretrained", "objective=mlm", "seed=0"]
    now, before = compose([*base, "label=bert"]), compose([*base, "objective.name=bert"])
    assert now.label == before.label == "bert"
    assert now.objective.name == "mlm"  # the objective config keeps its own name
    assert layout.dump_folder(now) == layout.dump_folder(before) == Path("results/pretrained/dumps/bert/seed0")
    # a command recorded before keeps its model when rebased onto another input's settings
    old = "python -m analysis.measures.change experiment=pretrained objective=mlm objective.name=bert seed=0"
    rebased = rebased_command(old, "python -m pipeline.dump.pretrained experiment=pretrained objective=mlm "
                                   "objective.name=bert seed=0 dump.dtype=float32", {"dump": {"dtype": "float32"}})
    assert rebased is not None and "objective.name=bert" in rebased and "dump.dtype=float32" in rebased


# ---------------------------------------------------------------- typed records

STAGE_JSON = {"stage": "dump", "config_hash": "abc", "config": {"dump": {"dtype": "float16"}},
              "command": "python -m pipeline.dump experiment=smoke objective=lm seed=1",
              "inputs": {"<results>/models/lm/seed1/model.pt": "f00"}, "results": "../../..",
              "outputs": {"tokens.tsv": {"size": 3, "sha256": "e3b0", "mtime_ns": 1}},
              "digest": "d1", "versions": {"torch": "2.13.0"}, "finished": "2026-12-06T10:00:00+0000",
              "checkpoint_sha256": "c0ffee", "n_tokens": 3}
TABLE_JSON = {"table": "mi", "rows": 2, "settings": {"measure": "mi"}, "config_hash": "h", "command": "python -m x",
              "inputs": {}, "outputs": {"seed1.csv": {"size": 10, "sha256": "s", "mtime_ns": 2}}, "digest": "d2",
              "versions": {}, "finished": "t", "wall_time_s": 1.5, "bootstrap": {"resamples": 200}}


@pytest.mark.parametrize("data,kind", [(STAGE_JSON, StageRecord), (TABLE_JSON, TableRecord)])
def test_a_record_reads_into_its_type_and_writes_back_the_same_json(data, kind):
    record = Record.from_json(json.loads(json.dumps(data)))
    assert type(record) is kind and record.to_json() == data
    assert all(isinstance(entry, Output) for entry in record.outputs.values())
    own = {k: v for k, v in data.items() if k in ("checkpoint_sha256", "n_tokens", "bootstrap")}
    assert record.extra == own  # what one stage adds of its own stays, beside the common fields


def test_an_older_record_without_outputs_reads_and_is_not_taken_as_finished(tmp_path):
    older = {k: v for k, v in STAGE_JSON.items() if k not in ("outputs", "digest", "results")}
    (tmp_path / "stage.json").write_text(json.dumps(older))
    record = read_record(tmp_path)
    assert isinstance(record, StageRecord) and record.outputs is None and record.to_json() == older
    assert "made before stages recorded their outputs" in stage_problem(tmp_path)
    (tmp_path / "stage.json").write_text(json.dumps({**older, "outputs": {"x": {"size": "big"}}}))
    assert read_record(tmp_path) is None  # malformed: no record, the stage is redone
    assert stage_problem(tmp_path).endswith("(no readable stage.json)")


# ---------------------------------------------------------------- every command of the README

# every `python -m <module>` of the README (not a pattern such as analysis.measures.<name>)
README_COMMANDS = sorted(set(re.findall(r"python -m ((?:pipeline|analysis)(?:\.[a-z_]+)+)(?![\w.<])",
                                        (REPO / "README.md").read_text())))


def test_the_readme_names_the_commands_of_every_stage():
    assert {"pipeline.prepare", "pipeline.train", "pipeline.dump", "pipeline.dump.pretrained", "pipeline.verify",
            "analysis.report", "analysis.measures.similarity"} <= set(README_COMMANDS)


@pytest.mark.parametrize("module", README_COMMANDS)
def test_every_readme_command_answers_help(module):
    """`python -m <module> --help` for every command the README names; merge has no Hydra config and
    answers its usage instead."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "powered by Hydra" in done.stdout or "usage:" in done.stdout.lower(), done.stdout[-500:]


# ---------------------------------------------------------------- the rules of ARCHITECTURE.md

# Bottom to top: a folder may import the folders before it, never one after it.
ROOMS = ["pipeline/errors.py", "pipeline/records", "pipeline/machine", "pipeline/config", "pipeline/model",
         "pipeline/prepare", "pipeline/train", "pipeline/dump", "pipeline/plan.py", "pipeline/verify.py",
         "analysis/io", "analysis/stats", "analysis/measures", "analysis/report"]
# Within the pipeline the stages do not import each other's work, only what sits below them; what the
# analyses take from the stages: the dump format, the model (influence reruns a stack), the prepared
# corpus and tokenizer ids, a training's convergence; never a writer.
ALLOWED_UP: set[tuple[str, str]] = set()  # none today: each arrow runs down
ANALYSIS_READS = {"pipeline.dump.format", "pipeline.dump.pretrained_probe", "pipeline.model.transformer",
                  "pipeline.model.hf", "pipeline.prepare.corpus", "pipeline.prepare.tokenizer",
                  "pipeline.train.convergence"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts): p
            for top in ("pipeline", "analysis") for p in sorted((REPO / top).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    modules = _modules()
    return {name.removesuffix(".__init__") for name in found if name in modules or f"{name}.__init__" in modules}


def _room(module: str) -> int:
    path = module.replace(".", "/")
    return max(i for i, room in enumerate(ROOMS) if path == room.removesuffix(".py") or path.startswith(room + "/")
               or path == room)


def test_no_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_no_folder_imports_a_folder_above_it_and_analysis_reads_no_writer():
    wrong = []
    for module, path in _modules().items():
        if module.endswith("__init__"):
            continue
        for target in _imports(path):
            here, there = _room(module), _room(target)
            if there > here and (ROOMS[here], ROOMS[there]) not in ALLOWED_UP:
                wrong.append(f"{module} -> {target}")
            if module.startswith("analysis.") and target.startswith("pipeline.") and _room(target) > ROOMS.index(
                    "pipeline/model") and target not in ANALYSIS_READS:
                wrong.append(f"{module} -> {target} (a stage's work)")
    assert not wrong


def test_no_import_circle():
    modules = _modules()
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start, [start])):
            pytest.fail("import circle: " + " -> ".join(circle))
