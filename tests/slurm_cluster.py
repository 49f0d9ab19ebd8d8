"""A one-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd on localhost with a
generated slurm.conf in a temporary folder (the client commands on `Cluster.env`'s PATH name it), stopped (these three processes only) when the context ends.

    with one_node_cluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

No accounting database (slurmdbd): `sacct` does not work on it, so clients ask `squeue`, and
MinJobAge keeps finished jobs in slurmctld's memory for an hour, long enough to read their states.
Needs root (slurmd starts every job's processes) and Debian's slurm-wlm and munge; `unavailable()`
says why not, for a test's skip.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
# The client commands, wrapped (in <folder>/bin, first on the cluster's PATH) to name this cluster's
# slurm.conf: SLURM_CONF alone does not reach every one of them, since the executor plugin's job step
# removes SLURM_* variables before its srun (a real cluster's config sits at the default path).
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol", "sacct")
PARTITION = "test"


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge, as .ci/run does)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs, and these tests do not run as root"
    return None


@dataclass
class Cluster:
    folder: Path
    env: dict  # os.environ with SLURM_CONF pointing at this cluster
    node: str
    cpus: int
    memory_mb: int

    def run(self, *args: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict]:
        """Every job slurmctld remembers: id, name, state, comment (squeue --states=all)."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%k")
        return [dict(zip(("id", "name", "state", "comment"), line.split("|", 3)))
                for line in out.splitlines() if line.strip()]

    def log(self, daemon: str) -> str:
        path = self.folder / f"{daemon}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _write_conf(folder: Path, node: str, cpus: int, memory_mb: int) -> Path:
    ctld_port, slurmd_port = _free_ports(2)
    f = folder
    lines = {
        "ClusterName": "testcluster",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "AuthType": "auth/munge", "CredType": "cred/munge",
        "AuthInfo": f"socket={f / 'munge' / 'munge.socket'}",
        "SlurmUser": "root", "SlurmdUser": "root",
        "SlurmctldPort": ctld_port, "SlurmdPort": slurmd_port,
        "StateSaveLocation": f / "state", "SlurmdSpoolDir": f / "spool",
        "SlurmctldPidFile": f / "slurmctld.pid", "SlurmdPidFile": f / "slurmd.pid",
        "SlurmctldLogFile": f / "slurmctld.log", "SlurmdLogFile": f / "slurmd.log",
        # No cgroups (containers often lack them): processes tracked by parent pid, no CPU binding.
        "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
        "SwitchType": "switch/none", "MpiDefault": "none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres", "SelectTypeParameters": "CR_CPU_Memory",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none", "JobCompType": "jobcomp/none",
        "MinJobAge": 3600,  # finished jobs stay visible to squeue for an hour
        "ReturnToService": 2,
        "SlurmdParameters": "config_overrides",  # the node has the CPUs and memory said here
    }
    text = "".join(f"{key}={value}\n" for key, value in lines.items())
    text += f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
    text += f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    conf = folder / "slurm.conf"
    conf.write_text(text)
    return conf


def _stop(pid_file: Path, timeout: float = 20.0) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises once it is gone
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def one_node_cluster(folder: Path, cpus: int | None = None, memory_mb: int = 16000):
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    conf = _write_conf(folder, node, cpus, memory_mb)
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    for client in CLIENTS:
        if shutil.which(client):
            wrapper = bin_dir / client
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which(client)} "$@"\n')
            wrapper.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cluster = Cluster(folder, env, node, cpus, memory_mb)
    munge = folder / "munge"
    try:
        subprocess.run(["munged", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                        f"--seed-file={munge / 'seed'}", "--force"], check=True, timeout=30,
                       capture_output=True)
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, timeout=30, env=env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", node], check=True, timeout=30, env=env,
                       capture_output=True)
        deadline = time.monotonic() + 60
        while True:
            state = cluster.run("sinfo", "--noheader", "--format=%T", check=False).strip()
            if state in ("idle", "mixed", "allocated"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster's node is {state or 'not up'} after 60 s:\n"
                                   f"{cluster.log('slurmctld')[-2000:]}\n{cluster.log('slurmd')[-2000:]}")
            time.sleep(0.5)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            ids = [job["id"] for job in cluster.jobs() if job["state"] in ("PENDING", "RUNNING", "CONFIGURING")]
            if ids:
                cluster.run("scancel", *ids, check=False)
        _stop(folder / "slurmd.pid")
        _stop(folder / "slurmctld.pid")
        _stop(munge / "munged.pid")
