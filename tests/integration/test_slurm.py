"""The smoke experiment on a real (one-node) SLURM cluster with workflow/profiles/slurm: every job but
the local rules goes through sbatch, a training cancelled after its first checkpoint is retried and
resumes from last.pt, the tables and that model's weights equal the local run's (the `finished`
fixture), and a job failing on a bad setting fails the workflow with its log shown.

The profile is used as a user would after editing it for this cluster: the partition set to the
test cluster's, no account (--slurm-no-account: the cluster has no accounting database), job states
read with squeue instead of sacct (no slurmdbd; MinJobAge keeps finished jobs visible), the first
status check after 5 s instead of 40. Everything else (resources, retries, latency-wait) is the
profile's own. The node claims twice the machine's cores and 8 GB per claimed core (memory is not
enforced: no cgroups), so that jobs share the 2 cores as a local run's do."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.smoke import ARCHIVE, EXPERIMENT, REPO, checkout_layout, snakemake, snakemake_command
from tests.slurm_cluster import PARTITION, one_node_cluster, unavailable

pytestmark = pytest.mark.slow

CANCELLED = ("mt", 1)  # the training cancelled mid-way


def _profile(folder: Path) -> Path:
    """workflow/profiles/slurm with this cluster's partition and status command, in `folder`."""
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"] = {**profile["default-resources"], "slurm_partition": PARTITION}
    profile["default-resources"].pop("slurm_account")
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                    "slurm-init-seconds-before-status-checks": 5, "slurm-keep-successful-logs": True})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _cancel_after_first_checkpoint(cluster, workdir: Path, run: subprocess.Popen, log: Path) -> dict:
    """Wait for CANCELLED's last.pt, then scancel its job; the job's squeue record."""
    objective, seed = CANCELLED
    last = workdir / "results" / EXPERIMENT / "models" / objective / f"seed{seed}" / "last.pt"
    comment = f"rule_train_wildcards_{objective}_{seed}"
    while run.poll() is None:
        if last.is_file():
            job = next((j for j in cluster.jobs() if j["comment"] == comment and j["state"] == "RUNNING"), None)
            if job is not None:
                cluster.run("scancel", job["id"])
                return job
        time.sleep(0.2)
    pytest.fail(f"snakemake ended before {last} appeared:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(f"no SLURM cluster on this machine: {why}")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    if not ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {ARCHIVE}")
    root = tmp_path_factory.mktemp("slurm")
    workdir = checkout_layout(root / "work")
    profile = _profile(root / "profile")
    # The node claims twice this machine's cores: SLURM then runs two of the 2-thread dump and measure
    # jobs at once, overlapping one job's work with the other's start-up (each SLURM job parses the
    # workflow twice, ~5 s each: the job step and the job); one at a time took ~40 minutes.
    cpus = 2 * (os.cpu_count() or 1)
    with one_node_cluster(root / "cluster", cpus=cpus, memory_mb=8000 * cpus) as cluster:
        started = time.monotonic()
        command = snakemake_command("--profile", str(profile))
        with open(root / "snakemake.log", "w+") as out:
            run = subprocess.Popen(command, cwd=workdir, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
                                   text=True)
            try:
                cancelled = _cancel_after_first_checkpoint(cluster, workdir, run, root / "snakemake.log")
                run.wait(timeout=3 * 3600)
            finally:
                if run.poll() is None:
                    run.kill()
            out.seek(0)
            log = out.read()
        wall = time.monotonic() - started
        jobs = cluster.jobs()
        failing = snakemake(workdir, "--profile", str(profile), "--forcerun", "dump",
                            f"results/{EXPERIMENT}/dumps/lm/seed1/stage.json",
                            overrides=("dump.device=cuda",), env=cluster.env, timeout=1800)
        print(f"SLURM run of the smoke experiment: {wall:.0f} s wall, {len(jobs)} sbatch jobs")
        yield {"workdir": workdir, "returncode": run.returncode, "log": log, "jobs": jobs,
               "cancelled": cancelled, "wall": wall, "failing": failing, "cluster": cluster}


def test_every_job_ran_through_sbatch_and_the_report_was_built(slurm_run):
    assert slurm_run["returncode"] == 0, slurm_run["log"][-6000:]
    workdir, jobs = slurm_run["workdir"], slurm_run["jobs"]
    assert (workdir / "reports" / EXPERIMENT / "report.html").is_file()
    rules = {job["comment"].split("_wildcards_")[0].removeprefix("rule_") for job in jobs}
    # prepare, every training, dump and measurement; merges and the report ran locally
    assert {"prepare", "train", "dump", "dump_init", "similarity", "measure", "dump_snapshot", "evolution"} <= rules
    assert not rules & {"merge", "merge_evolution", "report", "all"}, rules
    benchmarks = list((workdir / "results" / EXPERIMENT / "benchmarks").rglob("*.tsv"))
    local = [b for b in benchmarks if b.stem == "report" or b.stem.startswith("merge_")]
    # one sbatch job per benchmarked remote job, plus the cancelled training's first attempt
    assert len(jobs) == len(benchmarks) - len(local) + 1, (len(jobs), len(benchmarks), len(local))
    assert all(job["state"] == "COMPLETED" for job in jobs if job["id"] != slurm_run["cancelled"]["id"])


def test_cancelled_training_was_retried_from_its_checkpoint(slurm_run, finished):
    import torch

    objective, seed = CANCELLED
    states = {job["id"]: job["state"] for job in slurm_run["jobs"]}
    assert states[slurm_run["cancelled"]["id"]] == "CANCELLED"
    comment = f"rule_train_wildcards_{objective}_{seed}"
    attempts = [job for job in slurm_run["jobs"] if job["comment"] == comment]
    assert [job["state"] for job in attempts] == ["CANCELLED", "COMPLETED"], attempts
    train_log = slurm_run["workdir"] / "logs" / EXPERIMENT / "train" / objective / f"seed{seed}.log"
    assert "resuming" in train_log.read_text(), train_log.read_text()[-2000:]
    model = f"results/{EXPERIMENT}/models/{objective}/seed{seed}/model.pt"
    ours = torch.load(slurm_run["workdir"] / model, map_location="cpu", weights_only=True)
    theirs = torch.load(finished / model, map_location="cpu", weights_only=True)
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in ours["state_dict"]), \
        "weights differ from the local run's"


def test_tables_equal_the_local_runs(slurm_run, finished):
    metrics = Path("results") / EXPERIMENT / "metrics"
    tables = sorted(p.name for p in (finished / metrics).glob("*.csv"))
    assert len(tables) >= 7, tables
    for name in tables:
        ours = (slurm_run["workdir"] / metrics / name).read_text()
        assert ours == (finished / metrics / name).read_text(), f"{name} differs from the local run's"


def test_bad_setting_fails_the_workflow_with_its_log(slurm_run):
    failing = slurm_run["failing"]
    output = failing.stdout + failing.stderr
    assert failing.returncode != 0, output[-4000:]
    # the stage's own error, printed from the failed job's log by show-failed-logs
    assert "setting dump.device='cuda', but no CUDA device is available" in output, output[-4000:]
    assert "Error in rule dump" in output, output[-4000:]
