"""Provenance: every stage knows what it was made from, checks it, and repairs what is damaged.

Each probe of the "never silently wrong" issue as a test on the smoke slice: a prepared corpus is
never silently replaced, a model is never dumped through another tokenizer, damaged outputs are
named by their readers and redone by rerunning their own stage, and `pipeline.verify` finds what the
cheap checks cannot (an output altered in place, same size, same mtime).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.io.dumps import load_dump
from pipeline.prepare.corpus import prepare_data, read_archive
from pipeline.dump.stage import dump
from pipeline.records.files import read_json, sha256_file
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import train_tokenizer
from pipeline.train.stage import train
from tests.synthetic import FAST_TRAINING

REPO = Path(__file__).resolve().parents[2]
SHORT = [*FAST_TRAINING, "train.max_steps=10", "train.eval_every=5"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def parallel_files(tmp_path_factory, shared_zip) -> tuple[Path, Path]:
    """The smoke slice's first 4,000 Tatoeba pairs as two line-aligned files."""
    folder = tmp_path_factory.mktemp("parallel")
    pairs = read_archive(shared_zip, "deu.txt")[:4000]
    src, tgt = folder / "a.en", folder / "a.de"
    src.write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_zip) -> Path:
    """The smoke experiment's data, tokenizer, a 10-step LM and its dump, made once (copied per test)."""
    from pipeline.config.compose import compose

    root = tmp_path_factory.mktemp("trained")
    cfg = compose(["experiment=smoke", f"paths.results={root}", f"data.archive={shared_zip}", "train.progress=false",
                   "objective=lm", "dump.device=cpu", *SHORT])
    train(cfg)
    dump(cfg)
    return root


@pytest.fixture
def results(trained, tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(trained, copy)
    return copy


def lm_cfg(smoke_cfg, results: Path, *extra: str):
    return smoke_cfg("objective=lm", "dump.device=cpu", *SHORT, *extra, results=results)


# ---------------------------------------------------------------- 1: a prepared corpus is never silently replaced

def test_a_split_of_other_data_settings_is_not_rebuilt_by_train(smoke_cfg, parallel_files, tmp_path):
    src, tgt = parallel_files
    parallel = smoke_cfg("data.format=parallel", f"data.src_file={src}", f"data.tgt_file={tgt}")
    prepare_data(parallel)
    train_tokenizer(parallel)
    before = {p.name: sha256_file(p) for p in (tmp_path / "data").iterdir() if p.is_file()}
    with pytest.raises(PipelineError) as refused:
        train(smoke_cfg("objective=lm", *SHORT))  # without the data overrides: the Tatoeba archive
    message = str(refused.value)
    assert "\n" not in message
    assert "data.format='parallel' there, data.format='archive' in this run" in message
    assert "rebuild it with `python -m pipeline.prepare" in message
    assert {p.name: sha256_file(p) for p in (tmp_path / "data").iterdir() if p.is_file()} == before
    assert not (tmp_path / "models").exists()


def test_the_cli_refuses_it_with_one_line_and_exit_code_2(parallel_files, tmp_path, shared_zip):
    src, tgt = parallel_files
    common = ["experiment=smoke", f"paths.results={tmp_path}", "train.progress=false"]
    done = run_cli("-m", "pipeline.prepare", *common, f"data.archive={shared_zip}", "data.format=parallel",
                   f"data.src_file={src}", f"data.tgt_file={tgt}")
    assert done.returncode == 0, done.stderr[-2000:]
    refused = run_cli("-m", "pipeline.train", *common, f"data.archive={shared_zip}", "objective=lm", "seed=1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "data.format='parallel' there" in last and "pipeline.prepare" in last
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------- 2: never a dump through another tokenizer

def test_a_model_is_not_dumped_through_a_tokenizer_it_was_not_trained_with(smoke_cfg, parallel_files, tmp_path):
    src, tgt = parallel_files
    data = ("data.format=parallel", f"data.src_file={src.parent / 'b.en'}", f"data.tgt_file={src.parent / 'b.de'}")
    shutil.copy(src, src.parent / "b.en")
    shutil.copy(tgt, src.parent / "b.de")
    cfg = smoke_cfg("objective=lm", "dump.device=cpu", *SHORT, *data)
    train(cfg)
    trained_with = read_json(tmp_path / "models/lm/seed1/stage.json")["tokenizer_sha256"]
    # the same files edited in place (the same settings): prepare redoes the split and the tokenizer
    lines = (src.parent / "b.en").read_text(encoding="utf-8").splitlines()
    (src.parent / "b.en").write_text("".join(f"{line}\n" for line in lines[::-1]), encoding="utf-8")
    (src.parent / "b.de").write_text("".join(f"{line}\n" for line in
                                             (src.parent / "b.de").read_text(encoding="utf-8").splitlines()[::-1]),
                                     encoding="utf-8")
    prepare_data(cfg)
    train_tokenizer(cfg)
    assert read_json(tmp_path / "tokenizer/stage.json")["model_sha256"] != trained_with
    # the model's record says it was made from other data: the dump names it and the command that retrains
    with pytest.raises(PipelineError, match=r"models/lm/seed1 was made from another .*train\.mono.*"
                                            r"rebuild it with `python -m pipeline.train"):
        dump(cfg)
    # a checkpoint without its record (copied by hand): its own tokenizer hash still refuses the dump
    (tmp_path / "models/lm/seed1/stage.json").unlink()
    with pytest.raises(PipelineError, match=r"was trained with the tokenizer of sha256 .* it was remade since; "
                                            r"retrain the model with `python -m pipeline.train"):
        dump(cfg)
    assert not (tmp_path / "dumps").exists()


# ---------------------------------------------------------------- 4: damage is repaired by rerunning its stage

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_layer_file_is_named_by_the_analysis_and_redone_by_the_dump(smoke_cfg, results, damage):
    cfg = lm_cfg(smoke_cfg, results)
    folder = Path(cfg.paths.dump)
    layer = folder / "layer_02.npy"
    good = layer.read_bytes()
    if damage == "truncate":
        layer.write_bytes(good[: len(good) // 2])
    else:
        layer.unlink()
    with pytest.raises(PipelineError) as named:
        load_dump(folder).layer(2)
    assert str(layer) in str(named.value) and "repair it with `python -m pipeline.dump" in str(named.value)
    dump(cfg)  # not "already dumped": the record no longer matches
    assert layer.read_bytes() == good
    assert np.asarray(load_dump(folder).layer(2)).shape[0] == load_dump(folder).n_tokens


def weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_garbage_model_is_retrained_not_trusted(smoke_cfg, results, trained, caplog):
    cfg = lm_cfg(smoke_cfg, results)
    model = Path(cfg.paths.model) / "model.pt"
    model.write_bytes(b"garbage")
    with caplog.at_level("INFO", logger="pipeline.train"):
        train(cfg)
    assert "training" in caplog.text and "again" in caplog.text and "model.pt is 7 bytes" in caplog.text
    assert same_weights(weights(model), weights(trained / "models/lm/seed1/model.pt")), \
        "a deterministic CPU run retrains to the same weights"


def test_an_unreadable_last_checkpoint_is_set_aside_and_training_restarts(smoke_cfg, results, trained, caplog):
    cfg = lm_cfg(smoke_cfg, results)
    folder = Path(cfg.paths.model)
    (folder / "model.pt").unlink()
    (folder / "last.pt").write_bytes(b"\x80\x04 not a checkpoint")
    with caplog.at_level("WARNING", logger="pipeline.train"):
        train(cfg)
    aside = list(folder.glob("last.pt.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x80\x04 not a checkpoint"
    assert "last.pt is not a readable checkpoint" in caplog.text and aside[0].name in caplog.text
    assert same_weights(weights(folder / "model.pt"), weights(trained / "models/lm/seed1/model.pt"))


def test_a_damaged_table_is_named_by_its_reader(tmp_path):
    from analysis.io.tables import read_table, write_table

    path = write_table(tmp_path / "mi.csv", "tsne", [], {"x": 1})
    path.write_text(path.read_text() + "lm,1,0,0,0.5,0.5\n")
    with pytest.raises(PipelineError, match=r"mi\.csv is \d+ bytes, but .*mi\.json recorded \d+ bytes"):
        read_table(path, "tsne")


# ---------------------------------------------------------------- verify: every hash

def test_verify_passes_a_clean_run_and_names_an_output_altered_in_place(results, shared_zip):
    args = ["-m", "pipeline.verify", "experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}",
            f"paths.report={results}/no-report"]
    clean = run_cli(*args)
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    assert "no problem" in clean.stdout and "DAMAGED" not in clean.stdout
    # flip bytes of a layer file keeping its size and mtime: only a full hash can tell
    layer = results / "dumps/lm/seed1/layer_01.npy"
    stat = layer.stat()
    data = bytearray(layer.read_bytes())
    data[-8:] = bytes(8)
    layer.write_bytes(bytes(data))
    os.utime(layer, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    damaged = run_cli(*args)
    assert damaged.returncode == 1
    line = next(line for line in damaged.stdout.splitlines() if line.startswith("DAMAGED"))
    assert "layer_01.npy was altered" in line and "repair: python -m pipeline.dump" in line
    assert "1 problem" in damaged.stdout


def test_verify_repairs_a_stale_dump_with_a_command_that_reads_the_model_as_it_is(results, shared_zip):
    """The model retrained with another setting after its dump: verify's repair is the dump's command
    with the model's settings, which the dump accepts, and which leaves the newer model alone."""
    import shlex

    stage = ["experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}", "train.progress=false",
             "objective=lm", "dump.device=cpu", *SHORT]
    for step in (["-m", "pipeline.train", *stage, "train.lr=0.0015"], ["-m", "pipeline.dump", *stage, "train.lr=0.0015"],
                 ["-m", "pipeline.train", *stage, "train.lr=0.0025"]):
        done = run_cli(*step)
        assert done.returncode == 0, done.stderr[-3000:]
    model = sha256_file(results / "models/lm/seed1/model.pt")
    args = ["-m", "pipeline.verify", "experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}",
            f"paths.report={results}/no-report"]
    stale = run_cli(*args)
    assert stale.returncode == 1
    line = next(line for line in stale.stdout.splitlines() if line.startswith("DAMAGED"))
    assert "dumps/lm/seed1" in line and "model.pt" in line, line
    command = line.split("; repair: ", 1)[1]
    assert command.startswith("python -m pipeline.dump ") and "train.lr=0.0025" in command, command
    assert "train.lr=0.0015" not in command, command
    repaired = run_cli(*shlex.split(command)[1:])
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert sha256_file(results / "models/lm/seed1/model.pt") == model, "the repair retrained the model"
    again = run_cli(*args)
    assert again.returncode == 0 and "no problem" in again.stdout, again.stdout[-2000:]
    # the dump itself, given the older settings, names both ways out
    refused = run_cli("-m", "pipeline.dump", *stage, "train.lr=0.0015")
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert "rebuild it with `python -m pipeline.train" in message and "train.lr=0.0015" in message, message
    assert "or read it as it is, with `python -m pipeline.dump" in message and "train.lr=0.0025" in message, message


def test_records_list_inputs_and_outputs_with_their_hashes(results):
    record = read_json(results / "dumps/lm/seed1/stage.json")
    outputs = record["outputs"]
    assert {"layer_00.npy", "tokens.tsv", "meta.json"} <= set(outputs)
    for name, entry in outputs.items():
        path = results / "dumps/lm/seed1" / name
        assert entry["size"] == path.stat().st_size and entry["sha256"] == sha256_file(path), name
    model_record = read_json(results / "models/lm/seed1/stage.json")
    # inputs inside the results folder are recorded relative to it (a copied folder stays valid, as here)
    assert record["results"] == "../../.."
    assert record["inputs"]["<results>/models/lm/seed1/model.pt"] == model_record["outputs"]["model.pt"]["sha256"]
    data = read_json(results / "data/stage.json")
    assert record["inputs"]["<results>/data/probe.txt"] == data["outputs"]["probe.txt"]["sha256"]
    assert list(data["inputs"].values()) == [sha256_file(next(iter(data["inputs"])))]  # the corpus itself
    assert json.loads(json.dumps(record["command"])).startswith("python -m pipeline.dump")


# ---------------------------------------------------------------- killed stages resume to the same bytes

KILL_BEFORE_RENAME = """
import os, runpy, signal, sys
target, module = sys.argv[1], sys.argv[2]
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(target):  # the output is complete under its temporary name: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__")
"""


def killed_then_rerun(module: str, target: str, overrides: list[str]) -> None:
    killed = run_cli("-c", KILL_BEFORE_RENAME, target, module, *overrides)
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = run_cli("-m", module, *overrides)
    assert again.returncode == 0, again.stderr[-2000:]


# (tests/unit/test_faults.py kills the dump, neighbours and the report at more points)
@pytest.mark.parametrize("module,table", [("analysis.measures.change", "change")])
def test_a_killed_analysis_reruns_to_the_same_bytes(results, shared_zip, module, table):
    overrides = ["experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}", "objective=lm",
                 "seed=1", "analysis.device=cpu", *SHORT, f"hydra.run.dir={results}/hydra-{table}"]
    done = run_cli("-m", module, *overrides)
    assert done.returncode == 0, done.stderr[-2000:]
    part = results / "metrics" / table / "lm" / "seed1.csv"
    uninterrupted = part.read_bytes()
    part.unlink()
    part.with_suffix(".json").unlink()
    killed_then_rerun(module, f"{table}/lm/seed1.csv", overrides)
    assert part.read_bytes() == uninterrupted
    record = read_json(part.with_suffix(".json"))
    assert record["outputs"]["seed1.csv"]["sha256"] == sha256_file(part)
    assert record["inputs"] == {"<results>/dumps/lm/seed1": read_json(results / "dumps/lm/seed1/stage.json")["digest"]}


# ---------------------------------------------------------------- 5: one line and exit code 2, nothing left behind

@pytest.mark.parametrize("stage,override,named", [
    ("pipeline.train", "seed=abc", "setting seed='abc' is invalid"),
    ("pipeline.train", "seed=-1", "setting seed=-1 is invalid"),
    ("pipeline.dump", "seed=-1", "setting seed=-1 is invalid"),
    ("pipeline.train", "train.max_steps=abc", "setting train.max_steps='abc' is invalid"),
    ("analysis.measures.neighbours", "analysis.neighbours.k=0", "setting analysis.neighbours.k=0 is invalid"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_folder(tmp_path, shared_zip, stage, override, named):
    results = tmp_path / "results"
    refused = run_cli("-m", stage, "experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}",
                      "objective=lm", override)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {named}")
    assert list(tmp_path.iterdir()) == [], "a refused run left a folder behind"
