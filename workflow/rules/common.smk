"""Helpers shared by the rules: the resolved Hydra config of every job, the config hash of every
stage, the grid of objectives x seeds, and the folders outputs and logs go to.

Everything is checked here, while the Snakefile is parsed, so a wrong setting stops the run before
any job starts, with a message that names the setting.

Rerun triggers: each rule puts the hash of the part of the resolved config its stage depends on in
`params:` (one of snakemake's default rerun triggers). Editing a YAML file under conf/ or an entry
of `overrides` therefore reruns exactly the jobs whose hash changes, and what depends on them. The
overrides reach the shell command through the global HYDRA_ARGS, not through `params:`, so a
setting that one stage ignores never reruns that stage.
"""
import copy
import functools
import os
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf
from snakemake.exceptions import WorkflowError

# Parsing uses the pipeline package and Hydra configs of this checkout (the folder above workflow/),
# installed or not. The jobs, `python -m pipeline.<stage>` run in snakemake's working directory,
# import the same code when that is the checkout (snakemake run from the repository root) or when
# the package is installed (pip install -e .).
_CHECKOUT = str(Path(workflow.basedir).parent)
if sys.path[0] != _CHECKOUT:
    sys.path.insert(0, _CHECKOUT)

from pipeline.config.compose import CONFIG_DIR, compose, to_plain
from pipeline.config.grid import analysed_steps, snapshot_models, init_grid
from pipeline.config.stages import data_config, init_config, max_minutes, tokenizer_config, train_config, pretrained_dump_config
from pipeline.config.grid import INIT
from pipeline.config.checks import check_experiment_name, check_model_settings
from pipeline.prepare.corpus import corpus_files  # noqa: E402
from pipeline.model import hf  # noqa: E402  (light: transformers is imported by the dump job only)
from pipeline.config import pretrained  # noqa: E402
from pipeline.records.stage import damaged_outputs  # noqa: E402
from pipeline.records.files import config_hash
from pipeline.errors import PipelineError
from pipeline.config.analysis import check_analysis_settings  # noqa: E402
from pipeline.config.stages import evolution_settings, mi_settings, section as analysis_section  # noqa: E402

# The interpreter running snakemake has the pipeline's dependencies (it just imported them).
PYTHON = sys.executable
# Overrides the workflow sets itself, per job: users must not set them in `overrides`.
_RESERVED = re.compile(r"^(\+\+|\+|~)?((experiment|objective|seed|snapshot)=|hydra[./])")
# What a path passed as a Hydra override value may contain without Hydra-level quoting.
_PLAIN_PATH = re.compile(r"^[\w./@+-]+$")


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# ---------------------------------------------------------------- the workflow config

EXPERIMENT = config["experiment"]
if EXPERIMENT not in _choices("experiment"):
    fail(
        f"config key 'experiment': {EXPERIMENT!r} is not an experiment; choose one of "
        f"{', '.join(_choices('experiment'))} (the files in {CONFIG_DIR / 'experiment'})")

OVERRIDES = list(config["overrides"])
for _override in OVERRIDES:
    if _RESERVED.match(_override):
        fail(
            f"config key 'overrides': {_override!r} sets what the workflow sets itself "
            "(experiment: use the config key 'experiment'; objective and seed: use the "
            "workflow.objectives / workflow.seeds settings; snapshot: snapshots.steps; hydra.*: fixed per rule)")

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
    cap = max_minutes(job_config(wildcards.objective, int(wildcards.seed)))
    return 24 * 60 if cap is None else int(cap) + 30


# Every stage's command line starts with these words (each quoted by `:q` in the shell commands).
HYDRA_ARGS = [f"experiment={EXPERIMENT}", *OVERRIDES]


# ---------------------------------------------------------------- composing the Hydra config

def _compose(*extra: str):
    """The resolved config of `experiment`, `overrides` and `extra`, as the stage CLIs see it."""
    try:
        cfg = compose([*HYDRA_ARGS, *extra])
        OmegaConf.to_container(cfg, resolve=True)  # interpolation errors surface now, not in a job
        return cfg
    except Exception as error:  # Hydra's and OmegaConf's errors: name the override at fault
        culprit = next((o for o in OVERRIDES if not _composes(o)), None)
        if culprit is not None:
            fail(f"config key 'overrides': {culprit!r} is not a valid Hydra override "
                                f"for experiment {EXPERIMENT}: {error}")
        fail(f"experiment={EXPERIMENT} with overrides {OVERRIDES} {' '.join(extra)} "
                            f"does not compose: {error}")


def _composes(override: str) -> bool:
    try:
        OmegaConf.to_container(compose([f"experiment={EXPERIMENT}", override]), resolve=True)
        return True
    except Exception:
        return False


def _refuse(error: Exception, where: str) -> None:
    """Stop for a setting a stage would refuse, naming the override that set it when there is one."""
    culprit = next((o for o in OVERRIDES if o.lstrip("+~").split("=", 1)[0] in str(error)), None)
    fail(f"config key 'overrides': {culprit!r}: {error}" if culprit else f"{where}: {error}")


def _same_path(actual, expected: str, key: str) -> None:
    if os.path.normpath(str(actual)) != expected:
        fail(
            f"setting {key}={actual!r}: the workflow expects {expected!r} (derived from "
            "paths.results); move outputs with paths.results, not with the per-stage paths.*")


BASE = _compose()
try:
    check_experiment_name(BASE)
except PipelineError as _error:
    _refuse(_error, f"experiment {EXPERIMENT}")

RESULTS = os.path.normpath(str(BASE.paths.results))
if not _PLAIN_PATH.match(RESULTS):
    fail(f"setting paths.results={RESULTS!r}: use a path of letters, digits and "
                        "_ . / @ + - only (it is passed to Hydra on the command line)")
LOGS = f"logs/{BASE.experiment_name}"


def results(pattern: str) -> str:
    """An output path pattern under the experiment's results folder (cfg.paths.results)."""
    return f"{RESULTS}/{pattern}"


def logs(pattern: str) -> str:
    """A log path pattern under logs/<experiment_name>/."""
    return f"{LOGS}/{pattern}"


_same_path(BASE.paths.data, results("data"), "paths.data")
_same_path(BASE.paths.tokenizer, results("tokenizer"), "paths.tokenizer")

if BASE.data.format == "parallel":
    for _key in ("data.src_file", "data.tgt_file"):
        if not OmegaConf.select(BASE, _key):
            fail(
                f"setting {_key} must be set when data.format=parallel (experiment {EXPERIMENT}); "
                "e.g. --config 'overrides=[\"data.src_file=/data/train.en\",\"data.tgt_file=/data/train.de\"]'")


# ---------------------------------------------------------------- the grid of models

def _grid(cfg, pretrained: bool) -> list[tuple[str, int]]:
    objectives = OmegaConf.to_container(cfg.workflow.objectives, resolve=True)
    seeds = OmegaConf.to_container(cfg.workflow.seeds, resolve=True)
    known = _choices("objective")
    if (not isinstance(objectives, list) or not (objectives or pretrained)
            or not all(isinstance(o, str) for o in objectives)):
        fail(f"setting workflow.objectives={objectives!r}: expected a list of names, not empty unless "
             "pretrained.models names a model")
    for objective in objectives:
        if objective == INIT:
            fail(f"setting workflow.objectives: {INIT!r} is the step-0 control, never trained; "
                                "it is dumped and measured for every seed in use unless workflow.init=false")
        if objective not in known:
            fail(
                f"setting workflow.objectives: {objective!r} has no conf/objective/{objective}.yaml "
                f"(known: {', '.join(known)})")
    if len(set(objectives)) != len(objectives):
        fail(f"setting workflow.objectives={objectives}: a name is repeated")
    grid = []
    for objective in objectives:
        runs = seeds.get(objective) if isinstance(seeds, dict) else None
        if (not isinstance(runs, list) or not runs or len(set(runs)) != len(runs)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in runs)):
            fail(f"setting workflow.seeds.{objective}={runs!r}: expected a non-empty list "
                                "of distinct non-negative integers, one entry per objective in workflow.objectives")
        grid += [(objective, seed) for seed in runs]
    return grid


try:  # the pretrained models (pipeline/model/hf.py): label -> spec
    PRETRAINED = pretrained.specs(BASE)
except PipelineError as error:
    fail(str(error))
GRID = _grid(BASE, bool(PRETRAINED))  # (objective, seed) of every trained model, in the order of workflow.objectives
if not isinstance(OmegaConf.select(BASE, "workflow.init"), bool):
    fail(f"setting workflow.init={OmegaConf.select(BASE, 'workflow.init')!r}: expected true or false")
# The step-0 control: the untrained stack of every seed in use (rule dump_init), measured like a model.
INIT_GRID = init_grid(BASE)
PRETRAINED_GRID = [(label, pretrained.SEED) for label in PRETRAINED]  # each dumped by rule hf_dump, never trained
MODELS = [*GRID, *INIT_GRID, *PRETRAINED_GRID]  # every model the measurements run on
# The objectives rules train and dump from a checkpoint match (rule-level wildcard_constraints).
TRAINED = "|".join(re.escape(o) for o in _choices("objective") if o != INIT)
# The labels rule hf_dump matches (none: a pattern that matches nothing).
PRETRAINED_LABELS = "|".join(map(re.escape, PRETRAINED)) or "(?!)"


def _pretrained_role(label: str) -> str:
    """The role of a pretrained model, needed before any job runs (it picks the objective config of
    its jobs): stated, or read from its config.json in a local folder or the cache."""
    try:
        role = hf.role_without_loading(PRETRAINED[label])
    except PipelineError as error:
        fail(str(error))
    if role is None:
        spec = PRETRAINED[label]
        fail(f"setting pretrained.models.{label}.role is not set and {spec.name} is not in the local Hugging Face "
             f"cache to read it from: set it to mlm, lm or mt, or fetch the model first (`{spec.fetch_command()}`)")
    return role


PRETRAINED_ROLES = {label: _pretrained_role(label) for label in PRETRAINED}


def objective_args(wildcards) -> str:
    """The Hydra overrides that select one model's config in a job: `objective=<name>`, or for a
    pretrained model `objective=<role> objective.name=<label>` (labels are plain words: no quoting)."""
    if wildcards.objective in PRETRAINED:
        return f"objective={PRETRAINED_ROLES[wildcards.objective]} objective.name={wildcards.objective}"
    return f"objective={wildcards.objective}"


@functools.cache
def _objective_config(objective: str):
    if objective in PRETRAINED:
        return _compose(f"objective={PRETRAINED_ROLES[objective]}", f"objective.name={objective}")
    return _compose(f"objective={objective}")


@functools.cache
def job_config(objective: str, seed: int):
    """The resolved config of one model: what `python -m pipeline.train|dump` will see. Composed once
    per objective, the seed set afterwards (Hydra composes in ~0.4 s, and every SLURM job parses this
    file twice): the seed selects no config file, and what derives from it (paths.*) interpolates."""
    cfg = copy.deepcopy(_objective_config(objective))
    cfg.seed = seed
    try:  # every setting's type and range, as each stage checks them before its work
        check_model_settings(cfg)
    except PipelineError as error:
        _refuse(error, f"experiment {EXPERIMENT} ({objective} seed {seed})")
    _same_path(cfg.paths.model, results(f"models/{objective}/seed{seed}"), "paths.model")
    _same_path(cfg.paths.dump, results(f"dumps/{objective}/seed{seed}"), "paths.dump")
    if config_hash(tokenizer_config(cfg)) != TOKENIZER_HASH:
        fail(f"conf/objective/{objective}.yaml changes data settings; every model "
                            "shares one data split and tokenizer (rule prepare)")
    return cfg


# ---------------------------------------------------------------- config hashes (params:)
# Each equals the config_hash its stage records in stage.json.

DATA_HASH = config_hash(data_config(BASE))
TOKENIZER_HASH = config_hash(tokenizer_config(BASE))


def train_hash(wildcards) -> str:
    """Hash of what a model depends on: data, tokenizer, model, objective, training, seed."""
    return config_hash(train_config(job_config(wildcards.objective, int(wildcards.seed))))


def train_priority(wildcards) -> int:
    """Longest first: a training job's priority is its time cap in minutes (train.max_minutes for its
    objective), so the longest runs start first instead of ending alone on one core."""
    return int(max_minutes(job_config(wildcards.objective, int(wildcards.seed))) or 0)


def _dump_hash(objective: str, seed: int) -> str:
    """Hash of what a dump depends on: its model's config (the step-0 control: model settings,
    vocabulary and seed only) and the dump settings but the device (pipeline.dump.dump_config,
    rebuilt here so that parsing the workflow never imports torch)."""
    cfg = job_config(objective, seed)
    settings = {key: value for key, value in to_plain(cfg.dump).items() if key != "device"}
    model = init_config(cfg) if objective == INIT else train_config(cfg)
    return config_hash({**model, "dump": settings})


def dump_hash(wildcards) -> str:
    return _dump_hash(wildcards.objective, int(wildcards.seed))


def snapshot_dump_hash(wildcards) -> str:
    """pipeline.dump.dump_config of a snapshot: the model's config, the dump settings with the
    snapshot's maskings, and the step."""
    cfg = job_config(wildcards.objective, int(wildcards.seed))
    settings = {key: value for key, value in to_plain(cfg.dump).items() if key != "device"}
    settings["mlm_maskings"] = int(cfg.snapshots.mlm_maskings)
    return config_hash({**train_config(cfg), "dump": settings, "snapshot": int(wildcards.step)})


def init_dump_hash(wildcards) -> str:
    return _dump_hash(INIT, int(wildcards.seed))


def hf_dump_hash(wildcards) -> str:
    """pipeline.hf_dump.hf_dump_config: the data split, the model's settings, the dump settings."""
    return config_hash(pretrained_dump_config(job_config(wildcards.objective, pretrained.SEED), wildcards.objective))


# ---------------------------------------------------------------- the measurements

# Per-model measurements: the module each runs, and the models it runs on, the step-0 control
# included (t-SNE pictures: the first seed of each objective; everything else: every model).
MEASURE_MODULES = {"change": "analysis.measures.change", "influence": "analysis.measures.influence", "mi": "analysis.measures.mutual_info",
                   "neighbours": "analysis.measures.neighbours", "tsne": "analysis.measures.tsne"}
FIRST_SEEDS = [(o, s) for i, (o, s) in enumerate(MODELS) if all(o != p for p, _ in MODELS[:i])]
MEASURE_MODELS = {name: FIRST_SEEDS if name == "tsne" else MODELS for name in MEASURE_MODULES}
# Hash of each measurement's settings (its analysis section and the shared analysis keys).
ANALYSIS_HASH = {name: config_hash(analysis_section(BASE, name)) for name in ("similarity", *MEASURE_MODULES)}


def measure_inputs(wildcards) -> dict:
    """A per-model measurement reads the model's dump; influence also its checkpoint (the step-0
    control's is written by rule dump_init)."""
    inputs = {"dump": results(f"dumps/{wildcards.objective}/seed{wildcards.seed}/stage.json")}
    if wildcards.measure == "influence" and wildcards.objective not in PRETRAINED:  # theirs: the model's folder
        inputs["model"] = results(f"models/{wildcards.objective}/seed{wildcards.seed}/model.pt")
    return inputs


def measure_module(wildcards) -> str:
    return MEASURE_MODULES[wildcards.measure]


def measure_hash(wildcards) -> str:
    """The measurement's settings hash; for MI also the cluster counts this model gets (the sweep runs
    on the first seed of each objective, so reordering workflow.seeds moves it)."""
    if wildcards.measure == "mi":
        return config_hash(mi_settings(job_config(wildcards.objective, int(wildcards.seed))))
    return ANALYSIS_HASH[wildcards.measure]


def measure_parts(wildcards) -> list[str]:
    """The part tables a merged table is made of."""
    return [results(f"metrics/{wildcards.measure}/{o}/seed{s}.csv") for o, s in MEASURE_MODELS[wildcards.measure]]


def model_dumps() -> list[str]:
    """The finished dump (stage.json) of every model, trained or the step-0 control."""
    return [results(f"dumps/{o}/seed{s}/stage.json") for o, s in MODELS]


def metric_tables() -> list[str]:
    return [results(f"metrics/{name}.csv") for name in ANALYSIS_HASH]


# ---------------------------------------------------------------- evolution over training

# The models whose training keeps snapshots (snapshots.models) and that this grid trains; which of
# their kept steps exist is known once they are trained (rule train is a checkpoint), and
# snapshots.steps picks the ones dumped and measured.
_named = snapshot_models(BASE)
SNAPSHOT_MODELS = [model for model in _named if model in GRID]
for _objective, _seed in _named:
    if (_objective, _seed) not in GRID:
        print(f"warning: snapshots.models names {_objective} seed {_seed}, which this experiment does not train "
              f"(workflow.objectives / workflow.seeds): it has no snapshots", file=sys.stderr)
EVOLUTION_HASH = config_hash(evolution_settings(BASE))


def kept_points(objective: str, seed: int) -> list[str]:
    """The points of one model measured over training: `step<N>` for each analysed kept step its
    training reached (read from its train record once it is trained), then `final` (model.pt)."""
    checkpoints.train.get(objective=objective, seed=str(seed))  # until trained: not known yet
    record = Path(results(f"models/{objective}/seed{seed}/stage.json"))
    try:
        import json

        outputs = json.loads(record.read_text()).get("outputs") or {}
    except (OSError, ValueError):
        outputs = {}
    reached = [int(name[len("snapshots/step"):-len(".pt")]) for name in outputs
               if name.startswith("snapshots/step") and name.endswith(".pt")]
    return [f"step{step}" for step in analysed_steps(job_config(objective, seed), reached)] + ["final"]


def evolution_parts(wildcards=None) -> list[str]:
    return [results(f"metrics/evolution/{o}/seed{s}/{point}.csv") for o, s in SNAPSHOT_MODELS
            for point in kept_points(o, s)]


def snapshot_dumps(wildcards=None) -> list[str]:
    return [results(f"snapshots/{o}/seed{s}/{point}/stage.json") for o, s in SNAPSHOT_MODELS
            for point in kept_points(o, s) if point != "final"]


def evolution_inputs(wildcards) -> dict:
    """A point's measurement reads the finished model's dump, and a snapshot's its own dump."""
    inputs = {"final": results(f"dumps/{wildcards.objective}/seed{wildcards.seed}/stage.json")}
    if wildcards.point != "final":
        inputs["snapshot"] = results(f"snapshots/{wildcards.objective}/seed{wildcards.seed}/{wildcards.point}/stage.json")
    return inputs


def evolution_tables() -> list[str]:
    return [results("metrics/evolution.csv")] if SNAPSHOT_MODELS else []


# Compose every model of the grid now: a bad setting fails here, before any job runs.
for _objective, _seed in MODELS:
    job_config(_objective, _seed)


try:  # the analysis settings are the same for every model: checked once
    check_analysis_settings(BASE)
except PipelineError as error:
    _refuse(error, f"experiment {EXPERIMENT}")

# ---------------------------------------------------------------- the corpus

# The user's corpus files are inputs of rule prepare, so that editing one reruns exactly what depends
# on it (pipeline.prepare then compares their sha256 with its record and redoes the split). The default
# archive is the output of rule download; a named file that is not there is left out, so that a dry
# run needs no data (rule prepare then stops naming it).
CORPUS = [str(path) for path in corpus_files(BASE)]
DEFAULT_ARCHIVE = None if BASE.data.format == "parallel" or BASE.data.archive else CORPUS[0]


def corpus_inputs(wildcards) -> list[str]:
    return [path for path in CORPUS if path == DEFAULT_ARCHIVE or os.path.isfile(path)]


# ---------------------------------------------------------------- damaged outputs

# An output that is missing or has another size than its stage recorded (a truncated layer file, a
# garbage model.pt) makes its stage not done: its record is set aside now, before the DAG is built, and
# so are the damaged files the rules declare; since every artifact is a target of rule all, snakemake
# then reruns that stage, and what depends on it because its output is newer.
def _declared_outputs(record: Path, outputs: list[Path]) -> list[Path]:
    """The files of a damaged stage whose absence makes snakemake rerun it: its record, and the outputs
    the rule declares besides (a model's model.pt, a table's CSV)."""
    declared = [path for path in outputs if path.name == "model.pt" or path.suffix == ".csv"]
    if record.name == "stage.json" and record.parent.parent.parent.name == "models":  # a record of no outputs
        declared.append(record.parent / "model.pt")
    return [record, *declared]


for _record, _problem, _outputs in damaged_outputs(RESULTS):
    print(f"warning: {_problem}: its stage is redone", file=sys.stderr)
    for _path in _declared_outputs(_record, _outputs):
        _path.unlink(missing_ok=True)


wildcard_constraints:
    objective="|".join(map(re.escape, [*_choices("objective"), *PRETRAINED])),
    seed=r"0|[1-9][0-9]*",
    measure="|".join(MEASURE_MODULES),
    step=r"0|[1-9][0-9]*",
    point=r"final|step(0|[1-9][0-9]*)",
