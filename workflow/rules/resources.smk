# What each job asks for: GPUs, memory, minutes, CPUs (rules/common.smk holds the plan these read).

GPUS = int(config["gpus"])
# GPUs of one train job (null: `gpus`); above 1 the job starts that many ranks of one training
# with torchrun (pipeline/machine/distributed.py), each on its own GPU.
TRAIN_GPUS = GPUS if config.get("train_gpus") is None else int(config["train_gpus"])
TRAIN_LAUNCHER = ([PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={TRAIN_GPUS}"]
                  if TRAIN_GPUS > 1 else [PYTHON])
# What each job asks a scheduler for (Snakemake's standard resources; the SLURM executor turns them
# into sbatch's --mem, --time, --cpus-per-task and --gpus; a local run ignores mem_mb and runtime
# unless limited with --resources mem_mb=N). Sized from the default experiment's benchmark files
# (results/default/benchmarks, 2026-12-03): peak RSS 2.8 GB for a training, 0.6 GB per dump, 1.9 GB
# for the task distances, at most 1.1 GB for every other measurement; mem_mb leaves ~3x of that.
# Larger experiments (paper): raise them per rule with set-resources in workflow/profiles/slurm.
_MEMORY_MB = {"prepare": 2000, "train": 8000, "dump": 4000, "similarity": 8000, "measure": 4000,
              "evolution": 4000}
_RUNTIME_MIN = {"prepare": 30, "dump": 60, "similarity": 120, "measure": 120, "evolution": 60}


def needs(stage: str, gpus: int = 0) -> dict:
    """The resources of one rule: memory, minutes, CPUs (its threads) and GPUs. A training's
    runtime is its time cap plus 30 minutes for evaluation and start-up (train_runtime); its GPUs
    are on one node."""
    resources = {"mem_mb": _MEMORY_MB[stage],
                 "runtime": train_runtime if stage == "train" else _RUNTIME_MIN[stage],
                 "cpus_per_task": lambda wildcards, threads: threads, "gpu": gpus}
    if stage == "train":
        resources["nodes"] = 1  # torchrun --standalone starts every rank of a training on one node
    return resources


def train_runtime(wildcards) -> int:
    """Minutes a training job may run: its train.max_minutes plus 30; uncapped, a day."""
    cap = PLAN.max_minutes(wildcards.objective, int(wildcards.seed))
    return 24 * 60 if cap is None else int(cap) + 30


def train_priority(wildcards) -> int:
    """Longest first: a training job's priority is its time cap in minutes (train.max_minutes for its
    model), so the longest runs start first instead of ending alone on one core."""
    return int(PLAN.max_minutes(wildcards.objective, int(wildcards.seed)) or 0)
