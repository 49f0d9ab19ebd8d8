"""Faults of the machine, not of the input, through the command lines a user runs: each ends with ONE
`error:` line naming the file or folder and what to do, exit code 2 (130 for Ctrl-C), no traceback,
and nothing temporary left behind.

(a) a read-only results folder (Hydra's run folder in it, or elsewhere);
(b) a full disk: during the dump (its `.partial` files removed), prepare and training;
(c) a pretrained model's `pytorch_model.bin` that does not unpickle;
(d) Ctrl-C (SIGINT) during training.

Read-only and full disks are tmpfs mounts (root only: root ignores permission bits); without the
right to mount, those tests are skipped. Like tests/unit/test_faults.py, nothing is trained but (d)'s
few steps.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_faults import KILL_CHILD, base_cfg, common, last_line, run_cli, temporaries

MiB = 1 << 20


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_zip) -> Path:
    """A results folder: the smoke split and tokenizer (80 probe sentences) and an untrained lm (seed 1)."""
    from pipeline.prepare.corpus import prepare_data, read_lines
    from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
    from tests.synthetic import replace_output, save_untrained

    root = tmp_path_factory.mktemp("faults-os") / "results"
    cfg = base_cfg(root, shared_zip)
    prepare_data(cfg)
    train_tokenizer(cfg)
    probe = Path(cfg.paths.data) / "probe.txt"
    replace_output(probe, "".join(f"{line}\n" for line in read_lines(probe)[:80]))
    save_untrained(base_cfg(root, shared_zip, "objective=lm"), Tokenizer.load(cfg.paths.tokenizer))
    return root


def refused(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one line a refused run ends with (asserting the exit code and that no traceback came)."""
    assert done.returncode == code, f"exit code {done.returncode}: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith("error:"), done.stderr[-3000:]
    print(line)
    return line


@contextlib.contextmanager
def tmpfs(folder: Path, size: int):
    """A tmpfs of `size` bytes mounted at `folder` (made); unmounted at the end, whatever happens."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root (root ignores permission bits, so no chmod can stand in)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- (a) a read-only results folder

@pytest.mark.parametrize("hydra_inside", [True, False], ids=["hydra-folder-inside", "hydra-folder-elsewhere"])
def test_a_read_only_results_folder_is_one_line(prepared, shared_zip, tmp_path, hydra_inside):
    results = tmp_path / "ro"
    with tmpfs(results, 64 * MiB):
        for name in ("data", "tokenizer", "models"):
            shutil.copytree(prepared / name, results / name)
        remount_read_only(results)
        hydra = [] if hydra_inside else [f"hydra.run.dir={tmp_path}/hydra"]
        done = run_cli("-m", "pipeline.dump", *common(results, shared_zip), "objective=lm", *hydra)
        line = refused(done)
        assert "read-only" in line and "writable" in line, line
        assert str(results) in line, line
    if not hydra_inside:
        assert not (tmp_path / "hydra").exists(), "the refused run left its Hydra folder"


# ---------------------------------------------------------------- (b) a full disk

def test_a_full_disk_during_the_dump_is_one_line_and_frees_its_partial_files(prepared, shared_zip, tmp_path):
    disk = tmp_path / "disk"
    whole = 80 * 12 * 7 * 64 * 2  # about 80 sentences x 12 tokens x 7 layers x 64 wide x float16: ~0.9 MB
    with tmpfs(disk, whole // 3):
        done = run_cli("-m", "pipeline.dump", *common(prepared, shared_zip), "objective=lm",
                       f"paths.dump={disk}/dump", f"hydra.run.dir={tmp_path}/hydra", "dump.batch_tokens=64")
        line = refused(done)
        assert "no space left" in line.lower() and str(disk) in line, line
        assert "free" in line, line
        assert temporaries(disk) == [], "the failed dump left its partial files taking the space"
        assert files(disk) == [], files(disk)
    assert not (tmp_path / "hydra").exists(), "the refused run left its Hydra folder"


def test_a_full_disk_during_prepare_is_one_line(shared_zip, tmp_path):
    results = tmp_path / "disk"
    with tmpfs(results, 96 * 1024):  # Hydra's run folder fits, the split does not
        done = run_cli("-m", "pipeline.prepare", *common(results, shared_zip))
        line = refused(done)
        assert "no space left" in line.lower() and str(results) in line, line
        assert temporaries(results) == [], files(results)


def test_a_full_disk_during_training_is_one_line(prepared, shared_zip, tmp_path):
    model = tmp_path / "disk"
    with tmpfs(model, 64 * 1024):  # the log fits, a checkpoint (~1 MB) does not
        done = run_cli("-m", "pipeline.train", *common(prepared, shared_zip), "objective=lm", "seed=2",
                       f"paths.model={model}", f"hydra.run.dir={tmp_path}/hydra", "train.max_steps=2",
                       "train.eval_every=1", "train.dev_sentences=8", "train.bleu_sentences=4", "train.compile=false")
        line = refused(done)
        assert "no space left" in line.lower() and str(model) in line, line
        assert temporaries(model) == [], files(model)


# ---------------------------------------------------------------- (c) weights that do not unpickle

def test_a_pytorch_model_bin_that_does_not_unpickle_names_the_file(prepared, shared_zip, tmp_path):
    pytest.importorskip("transformers")
    from pipeline.prepare.corpus import read_lines
    from tests.hf_models import build

    folder = tmp_path / "bert"
    build("bert", folder, read_lines(prepared / "data" / "probe.txt"))
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    bad = folder / "pytorch_model.bin"
    bad.write_bytes(b"\x80\x04garbage, not a pickle\n" * 64)
    out = tmp_path / "dump"
    done = run_cli("-m", "pipeline.dump.pretrained", *common(prepared, shared_zip),
                   f"+pretrained.models.bert={{name: {folder}}}", "objective=mlm", "objective.name=bert", "seed=0",
                   f"paths.dump={out}", f"hydra.run.dir={tmp_path}/hydra")
    line = refused(done)
    assert str(bad) in line and "not a loadable checkpoint" in line, line
    assert not out.exists() or files(out) == [], files(out)
    from pipeline.model import hf  # where it is caught: hf.load names the file
    from pipeline.config import pretrained
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=f"^{re.escape(str(bad))} is not a loadable checkpoint"):
        hf.load(pretrained.HFSpec("bert", str(folder)), folder, "mlm", "cpu", None)


# ---------------------------------------------------------------- (d) Ctrl-C during training

@pytest.mark.parametrize("target,nth", [
    ("torch.optim:AdamW.step", 3),                       # stepping
    ("torch:save", 1),                                   # writing a checkpoint under its temporary name
], ids=["stepping", "saving"])
def test_ctrl_c_during_training_is_one_line_exit_130(prepared, shared_zip, tmp_path, target, nth):
    model = tmp_path / "model"
    done = run_cli("-c", KILL_CHILD, target, str(nth), "", "pipeline.train", *common(prepared, shared_zip),
                   "objective=lm", "seed=2", f"paths.model={model}", f"hydra.run.dir={tmp_path}/hydra",
                   "train.max_steps=6", "train.eval_every=2", "train.dev_sentences=8", "train.bleu_sentences=4",
                   "train.compile=false", env={"CHILD_SIGNAL": "SIGINT"})
    line = refused(done, 130)
    assert "interrupted" in line, line
    if model.exists():
        assert temporaries(model) == [], files(model)
    assert not (model / "stage.json").exists(), "an interrupted training has a record"


def test_the_merge_command_line_ends_a_full_disk_in_one_line(monkeypatch, capsys, tmp_path):
    """analysis.merge has its own argparse entry point (snakemake's merge rules call it): the same
    one line and exit code 2 as the Hydra stages."""
    import errno

    from analysis.measures import merge

    out = tmp_path / "neighbours.csv"

    def full(parts, path, table):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(merge, "merge_parts", full)
    with pytest.raises(SystemExit) as stopped:
        merge.main(["neighbours", str(out), str(tmp_path / "part.csv")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on device") and str(out) in err[0], err
