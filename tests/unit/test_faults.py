"""Faults a user or a machine causes, through the command lines a user runs.

1. Bad input on the command line: exit code 2, one `error:` line naming the setting, no traceback,
   and no folder left behind (Hydra's run folder included).
2. A NUL byte inside a sentence of a parallel corpus: refused naming the file, the line, U+0000.
3. A stage killed with SIGKILL (no cleanup can run: the OOM killer, a lost job), then run again:
   its outputs are byte-identical to those of an uninterrupted run and nothing temporary is left:
   (a) a dump, (b) an analysis, (c) the report.

The killed stages run on one prepared smoke corpus with untrained models (`save_untrained`), so no
test trains anything.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.compose import compose
from pipeline.records.files import read_json, sha256_file
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def tree(root: Path) -> set[str]:
    """Every path (files and folders) under `root`, relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def temporaries(folder: Path) -> list[str]:
    """Files an interrupted write may leave: atomic_path's `.<name>.*.tmp`, the dump's `.<name>.partial`."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*")
                  if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".partial")))


# A child that runs a stage's real CLI entry point (`<module>.main()`, as `python -m <module>`) with one
# function replaced by one that SIGKILLs the process (or sends it the signal named in CHILD_SIGNAL:
# SIGINT is Ctrl-C) at its `nth` call (counting only calls with an argument that ends with `match`,
# when given): argv = target nth match module overrides...
# `target` is `module:attr.path`; it is patched before the CLI's module is imported, so a name the
# CLI's module imports from it is the patched one too.
KILL_CHILD = r"""
import importlib, os, signal, sys
target, nth, match, module = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
owner_name, _, attr = target.partition(":")
owner = importlib.import_module(owner_name)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real, calls = getattr(owner, name), [0]
def dying(*args, **kwargs):
    if not match or any(str(a).replace(os.sep, "/").endswith(match) for a in args):
        calls[0] += 1
        if calls[0] == nth:
            # SIGKILL: no finally, no atexit, as the OOM killer would
            os.kill(os.getpid(), getattr(signal, os.environ.get("CHILD_SIGNAL", "SIGKILL")))
    return real(*args, **kwargs)
setattr(owner, name, dying)
cli = importlib.import_module(module)
if not hasattr(cli, "main"):  # a stage folder: `python -m <folder>` runs its stage.py
    cli = importlib.import_module(module + ".stage")
sys.argv = [cli.__file__, *sys.argv[5:]]
cli.main()
"""


def run_killed(target: str, nth: int, match: str, module: str, overrides: list[str]) -> subprocess.CompletedProcess:
    killed = run_cli("-c", KILL_CHILD, target, str(nth), match, module, *overrides)
    assert killed.returncode == -signal.SIGKILL, \
        f"the child was not killed (rc {killed.returncode}): {killed.stderr[-3000:]}"
    return killed


# ---------------------------------------------------------------- the shared smoke results

@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_zip) -> Path:
    """A results folder: the smoke split and tokenizer (N_PROBE probe sentences), untrained lm and mlm
    (seed 1) checkpoints, the lm dump, the mlm dump with MLM_DUMP (many small batches: a kill lands
    mid-way), the lm model's neighbours part and the merged neighbours table (for the report).
    Read-only for the tests."""
    from analysis.measures import neighbours
    from analysis.io.tables import merge_parts
    from pipeline.config.layout import part_path, table_path
    from pipeline.prepare.corpus import prepare_data, read_lines
    from pipeline.dump.stage import dump
    from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
    from tests.synthetic import replace_output, save_untrained

    root = tmp_path_factory.mktemp("faults") / "results"
    cfg = base_cfg(root, shared_zip)
    prepare_data(cfg)
    train_tokenizer(cfg)
    probe = Path(cfg.paths.data) / "probe.txt"  # fewer probe sentences: every dump and analysis is quicker
    replace_output(probe, "".join(f"{line}\n" for line in read_lines(probe)[:N_PROBE]))
    tok = Tokenizer.load(cfg.paths.tokenizer)
    for objective in ("lm", "mlm"):
        save_untrained(base_cfg(root, shared_zip, f"objective={objective}"), tok)
    dump(base_cfg(root, shared_zip, "objective=lm"))
    # the mlm dump the killed ones are compared with, made as they are remade (a process of its own): its
    # readout.npz holds float32 logits' losses, whose last bits depend on the threads the process runs with
    done = run_cli("-m", "pipeline.dump", *common(root, shared_zip), "objective=mlm", "seed=1", *MLM_DUMP,
                   f"hydra.run.dir={root.parent}/hydra-mlm")
    assert done.returncode == 0, done.stderr[-3000:]
    lm = base_cfg(root, shared_zip, "objective=lm", "analysis.device=cpu")
    part = neighbours.run(lm)
    assert part == part_path(lm, "neighbours")
    merge_parts([part], table_path(lm, "neighbours"), "neighbours")
    return root


N_PROBE = 80
MLM_DUMP = ["dump.batch_tokens=64", "dump.mlm_maskings=2"]  # 80 x 4 layer writes, then 160 x 4 for masked/


def common(root: Path, zip_path: Path) -> list[str]:
    return ["experiment=smoke", "experiment_name=faults", f"paths.results={root}", f"data.archive={zip_path}",
            "train.progress=false", "dump.device=cpu", "analysis.device=cpu"]


def base_cfg(root: Path, zip_path: Path, *overrides: str):
    return compose([*common(root, zip_path), *overrides])


# ---------------------------------------------------------------- 1: bad input on the command line

@pytest.mark.parametrize("override,key,results_exist", [
    ("seed=abc", "seed", False),
    ("seed=abc", "seed", True),
    ("seed=-1", "seed", True),
    ("train.max_steps=abc", "train.max_steps", True),
])
def test_bad_input_is_one_error_line_exit_2_and_leaves_no_folder(tmp_path, shared_zip, override, key, results_exist):
    results = tmp_path / "results"
    if results_exist:  # an experiment's folder with an earlier run's Hydra folder in it: kept as it is
        (results / "hydra" / "2000-01-01_00-00-00" / ".hydra").mkdir(parents=True)
        (results / "hydra" / "2000-01-01_00-00-00" / "train.log").write_text("an earlier run\n")
        (results / "data").mkdir()
        (results / "notes.txt").write_text("the user's\n")
    before = tree(tmp_path)
    refused = run_cli("-m", "pipeline.train", "experiment=smoke", "experiment_name=faults", f"paths.results={results}",
                      f"data.archive={shared_zip}", "train.progress=false", "objective=lm", override)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_line(refused.stderr)
    assert line.startswith("error:"), refused.stderr[-3000:]
    assert f"setting {key}=" in line and "invalid" in line, line
    assert tree(tmp_path) == before, "the refused run left (or removed) something under the results folder"


@pytest.mark.parametrize("name", ["../../outside", "", "/abs/name", "a/b"])
def test_an_experiment_name_that_is_not_a_plain_name_is_refused_and_writes_nothing(tmp_path, shared_zip, name):
    """results/<name>/ must stay inside results/: refused before any work (the CLI runs in a folder two
    levels down, so that ../../outside would land in tmp_path). The workflow's check: test_workflow_dag."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    refused = subprocess.run([sys.executable, "-m", "pipeline.prepare", "experiment=smoke",
                              f"experiment_name={name}", f"data.archive={shared_zip}"],
                             cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_line(refused.stderr)
    assert line.startswith("error: setting experiment_name=") and "plain name" in line, line
    assert tree(tmp_path) == {"a", "a/b"}, "the refused run left a folder behind"


# ---------------------------------------------------------------- 2: a NUL byte in a parallel corpus

EN = "the a cat dog house tree sees likes eats big small red green old new runs walks".split()
DE = "der die das Katze Hund Haus Baum sieht mag isst gross klein rot gruen alt neu".split()


def parallel_corpus(folder: Path, n: int = 300) -> tuple[Path, Path]:
    """Two line-aligned files of `n` distinct synthetic sentence pairs."""
    rng = random.Random(0)
    src, tgt = [], []
    for i in range(n):
        src.append(" ".join(rng.choice(EN) for _ in range(rng.randint(2, 8))) + f" {i}.")
        tgt.append(" ".join(rng.choice(DE) for _ in range(rng.randint(2, 8))) + f" {i}.")
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "corpus.en", folder / "corpus.de"
    for path, lines in zip(paths, (src, tgt)):
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return paths


SMALL_SPLIT = ["data.valid_size=20", "data.test_size=20", "data.probe_size=20"]


@pytest.mark.parametrize("side,line,column", [("src", 42, 4), ("tgt", 300, 1)])
def test_a_nul_byte_in_a_sentence_names_the_file_and_line(tmp_path, smoke_cfg, side, line, column):
    from pipeline.prepare.corpus import prepare_data

    src, tgt = parallel_corpus(tmp_path / "corpus")
    data = ["data.format=parallel", f"data.src_file={src}", f"data.tgt_file={tgt}", *SMALL_SPLIT]
    prepare_data(smoke_cfg(*data, results=tmp_path / "clean"))  # the same files, clean, are a corpus
    bad = src if side == "src" else tgt
    lines = bad.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = lines[line - 1][:column - 1] + "\x00" + lines[line - 1][column - 1:]
    bad.write_text("\n".join(lines), encoding="utf-8")
    results = tmp_path / "results"
    refused = run_cli("-m", "pipeline.prepare", "experiment=smoke", "experiment_name=faults",
                      f"paths.results={results}", "train.progress=false", *data)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    message = last_line(refused.stderr)
    assert message.startswith("error:"), refused.stderr[-3000:]
    assert str(bad) in message and f"line {line}," in message and "U+0000" in message, message
    assert f"column {column}" in message, message
    assert not results.exists(), "a refused prepare left a folder behind"


# ---------------------------------------------------------------- 3a: a killed dump

def dump_files(folder: Path) -> dict[str, bytes]:
    """Every file of a dump but its record (which holds the time and its own folder) and temporary
    files (checked on their own), by relative path."""
    skip = {"stage.json", *temporaries(folder)}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and p.relative_to(folder).as_posix() not in skip}


@pytest.mark.parametrize("target,nth,match", [
    ("pipeline.dump.writer:LayerWriter.write", 600, ""),          # mid-way through the masked set's forward passes
    ("os:replace", 1, "masked/layer_01.npy"),             # renaming: the plain set final, masked/ half
    ("os:replace", 1, "masked/meta.json"),                # the last output, complete under its temporary name
], ids=["mid-way", "during-the-renames", "before-the-last-rename"])
def test_a_killed_dump_reruns_to_the_same_bytes(base, shared_zip, tmp_path, target, nth, match):
    from analysis.io.dumps import load_dump

    reference = base / "dumps" / "mlm" / "seed1"  # the uninterrupted dump of the same config
    out = tmp_path / "dump"
    overrides = [*common(base, shared_zip), "objective=mlm", "seed=1", *MLM_DUMP, f"paths.dump={out}",
                 f"hydra.run.dir={tmp_path}/hydra"]
    run_killed(target, nth, match, "pipeline.dump", overrides)
    assert not (out / "stage.json").exists(), "a killed dump has a record"
    assert temporaries(out), "the child was killed before it began writing"
    with pytest.raises(PipelineError, match="no finished dump"):
        load_dump(out)
    again = run_cli("-m", "pipeline.dump", *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    made, wanted = dump_files(out), dump_files(reference)
    assert sorted(made) == sorted(wanted)
    assert any(name.startswith("masked/layer_") for name in made)
    for name in wanted:
        assert made[name] == wanted[name], f"{name} differs from the uninterrupted dump's"
    record = read_json(out / "stage.json")
    for name, entry in record["outputs"].items():
        assert entry["sha256"] == sha256_file(out / name), name
    assert temporaries(out) == [], "the rerun left the killed run's temporary files"


# ---------------------------------------------------------------- 3b: a killed analysis

@pytest.fixture(scope="module")
def neighbours_reference(base, shared_zip, tmp_path_factory) -> bytes:
    """The lm model's neighbours part made by an uninterrupted `python -m analysis.measures.neighbours`."""
    folder = tmp_path_factory.mktemp("neighbours-reference")
    done = run_cli("-m", "analysis.measures.neighbours", *common(base, shared_zip), "objective=lm", "seed=1",
                   f"paths.metrics={folder}/metrics", f"hydra.run.dir={folder}/hydra")
    assert done.returncode == 0, done.stderr[-3000:]
    return (folder / "metrics" / "neighbours" / "lm" / "seed1.csv").read_bytes()


@pytest.mark.parametrize("target,nth,match", [
    ("analysis.measures.neighbours:nearest_neighbours", 3, ""),    # mid-way: layers 0 and 1 done, layer 2 under way
    ("os:replace", 1, "neighbours/lm/seed1.csv"),         # the CSV complete under its temporary name
    ("os:replace", 1, "neighbours/lm/seed1.json"),        # the CSV in place, its record not yet
], ids=["mid-way", "before-the-rename", "before-the-record"])
def test_a_killed_analysis_reruns_to_the_same_bytes(base, shared_zip, neighbours_reference, tmp_path, target, nth,
                                                    match):
    metrics = tmp_path / "metrics"
    overrides = [*common(base, shared_zip), "objective=lm", "seed=1", f"paths.metrics={metrics}",
                 f"hydra.run.dir={tmp_path}/hydra"]
    run_killed(target, nth, match, "analysis.measures.neighbours", overrides)
    part = metrics / "neighbours" / "lm" / "seed1.csv"
    if match.endswith(".csv") or not match:
        assert not part.exists(), "a killed analysis left its table under the final name"
    again = run_cli("-m", "analysis.measures.neighbours", *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert part.read_bytes() == neighbours_reference, "the rerun's table differs from an uninterrupted run's"
    assert temporaries(metrics) == [], "the rerun left the killed run's temporary file"
    assert sorted(p.name for p in part.parent.iterdir()) == ["seed1.csv", "seed1.json", "seed1.npz"]
    record = read_json(part.with_suffix(".json"))
    assert record["outputs"]["seed1.csv"]["sha256"] == sha256_file(part)
    assert record["inputs"] == {str(base / "dumps" / "lm" / "seed1"): read_json(
        base / "dumps" / "lm" / "seed1" / "stage.json")["digest"]}


# ---------------------------------------------------------------- 3c: a killed report

@pytest.mark.parametrize("target,nth,match", [
    ("analysis.report.html:page", 1, ""),                        # every section built, nothing written yet
    ("os:replace", 1, "report.html"),                     # the page complete under its temporary name
], ids=["before-the-write", "before-the-rename"])
def test_a_killed_report_reruns_to_the_same_bytes(base, shared_zip, tmp_path, target, nth, match):
    reports = tmp_path / "report"
    overrides = [*common(base, shared_zip), f"paths.report={reports}", f"hydra.run.dir={tmp_path}/hydra"]
    done = run_cli("-m", "analysis.report", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    page = reports / "report.html"
    uninterrupted = page.read_bytes()
    assert b'<section id="neighbours">' in uninterrupted and b"Not measured: nearest neighbours" not in uninterrupted
    page.unlink()
    page.with_suffix(".json").unlink()
    run_killed(target, nth, match, "analysis.report", overrides)
    assert not page.exists(), "a killed report left a page under the final name"
    again = run_cli("-m", "analysis.report", *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = page.read_bytes()
    if rerun != uninterrupted:
        at = next(i for i, (a, b) in enumerate(zip(rerun, uninterrupted)) if a != b)
        pytest.fail(f"the rerun's page differs from the uninterrupted one's at byte {at}: "
                    f"{uninterrupted[max(0, at - 80):at + 80]!r} vs {rerun[max(0, at - 80):at + 80]!r}")
    assert temporaries(reports) == [], "the rerun left the killed run's temporary file"
    assert sorted(p.name for p in reports.iterdir()) == ["report.html", "report.json"]
    assert read_json(page.with_suffix(".json"))["outputs"]["report.html"]["sha256"] == sha256_file(page)


# ---------------------------------------------------------------- 4: checkpoints run no code

class Planted:
    """An object whose unpickling runs code: it creates the file `marker` (open(marker, "w"))."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def planted_checkpoint(path: Path, marker: Path, like: Path | None = None) -> None:
    """A checkpoint with code in it at `path`: `like`'s content (a real checkpoint) plus a planted object."""
    import torch

    content = torch.load(like, weights_only=True) if like is not None else {}
    torch.save({**content, "extra": Planted(marker)}, path)


def test_a_planted_last_checkpoint_is_refused_before_it_runs(base, shared_zip, tmp_path):
    model, marker = tmp_path / "model", tmp_path / "ran"
    model.mkdir()
    planted_checkpoint(model / "last.pt", marker)
    refused = run_cli("-m", "pipeline.train", *common(base, shared_zip), "objective=lm", "seed=1",
                      f"paths.model={model}", f"hydra.run.dir={tmp_path}/hydra")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_line(refused.stderr)
    assert line.startswith("error:") and str(model / "last.pt") in line and "pickled objects" in line, line
    assert not marker.exists(), "loading the planted checkpoint ran its code"
    assert (model / "last.pt").exists(), "the user's file was moved or deleted"


def test_a_replaced_model_with_its_record_rewritten_is_refused_by_the_dump(base, shared_zip, tmp_path):
    import shutil

    from pipeline.records.files import STAGE_RECORD, write_json

    results, marker = tmp_path / "results", tmp_path / "ran"
    shutil.copytree(base, results)
    folder = results / "models" / "lm" / "seed1"
    model = folder / "model.pt"
    planted_checkpoint(model, marker, like=base / "models" / "lm" / "seed1" / "model.pt")
    if (folder / STAGE_RECORD).exists():  # a trained model's record, rewritten as anyone holding the folder can
        record = read_json(folder / STAGE_RECORD)
        record["outputs"]["model.pt"].update(size=model.stat().st_size, sha256=sha256_file(model),
                                             mtime_ns=model.stat().st_mtime_ns)
        write_json(folder / STAGE_RECORD, record)
    refused = run_cli("-m", "pipeline.dump", *common(results, shared_zip), "objective=lm", "seed=1",
                      f"paths.dump={tmp_path}/dump", f"hydra.run.dir={tmp_path}/hydra")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_line(refused.stderr)
    assert line.startswith("error:") and str(model) in line and "pickled objects" in line, line
    assert not marker.exists(), "loading the replaced model ran its code"


def test_load_model_refuses_code_and_names_a_file_that_is_no_checkpoint(base, tmp_path):
    from pipeline.model.transformer import UnsafeCheckpoint, load_model

    real = base / "models" / "lm" / "seed1" / "model.pt"
    load_model(real)  # the pipeline's own checkpoints are plain data
    planted_checkpoint(tmp_path / "planted.pt", tmp_path / "ran", like=real)
    with pytest.raises(UnsafeCheckpoint, match=r"planted\.pt holds pickled objects"):
        load_model(tmp_path / "planted.pt")
    assert not (tmp_path / "ran").exists()
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(PipelineError, match=r"garbage\.pt is not a readable checkpoint"):
        load_model(tmp_path / "garbage.pt")


# ---------------------------------------------------------------- 5: one writer per folder

HOLDER = r"""
import sys, time
from pipeline.records.locks import one_writer
with one_writer(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds the writer's lock of a path (as a running stage would) until killed."""
    started = []

    def hold(path: Path) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        started.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield hold
    for child in started:
        child.kill()
        child.wait()


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, holder):
    from pipeline.records.locks import one_writer

    folder = tmp_path / "results" / "models" / "lm" / "seed1"
    first = holder(folder)
    with pytest.raises(PipelineError, match=rf"seed1 is being written by process {first.pid} on .*, since "):
        with one_writer(folder):
            pytest.fail("a second writer got the lock")
    first.kill()  # SIGKILL: no cleanup ran, its lock file is still there
    first.wait()
    assert (folder.parent / ".seed1.lock").exists()
    with one_writer(folder):
        assert str(os.getpid()) in (folder.parent / ".seed1.lock").read_text()
    assert not (folder.parent / ".seed1.lock").exists(), "the lock file outlived its writer"
    with one_writer(tmp_path / "new" / "deeper" / "out"):  # folders it had to make for its lock go with it
        pass
    assert not (tmp_path / "new").exists()


def test_on_a_file_system_without_locks_the_writer_is_warned_and_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from pipeline.records.locks import one_writer

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level("WARNING", logger="pipeline.records.locks"), one_writer(tmp_path / "out"):
        ran.append(True)
    assert ran and "does not lock (No locks available)" in caplog.text
    assert not (tmp_path / ".out.lock").exists()


@pytest.mark.parametrize("module,folder", [("pipeline.train", "models/lm/seed1"), ("pipeline.dump", "dumps/lm/seed1")])
def test_a_stage_refuses_a_folder_another_process_writes(base, shared_zip, tmp_path, holder, module, folder):
    """Two trainings or two dumps of one model: the second stops in one line before touching anything."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(base, results)
    before = {p: p.read_bytes() for p in sorted((results / folder).rglob("*")) if p.is_file()}
    first = holder(results / folder)
    refused = run_cli("-m", module, *common(results, shared_zip), "objective=lm", "seed=1",
                      f"hydra.run.dir={tmp_path}/hydra")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_line(refused.stderr)
    assert line.startswith("error:") and f"is being written by process {first.pid}" in line, line
    assert {p: p.read_bytes() for p in sorted((results / folder).rglob("*")) if p.is_file()} == before
