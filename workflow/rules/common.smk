"""What the rules read: the experiment's plan (pipeline/plan.py: every job's config, the grid of models,
each job's settings hash), the paths of pipeline/config/layout.py as patterns, and the input functions.

Everything is checked while the Snakefile is parsed (the plan composes every model), so a wrong
setting stops the run before any job starts, with a message that names the setting.
"""
import os
import sys
from pathlib import Path

# Parsing uses the pipeline package and Hydra configs of this checkout (the folder above workflow/),
# installed or not. The jobs, `python -m pipeline.<stage>` run in snakemake's working directory,
# import the same code when that is the checkout (snakemake run from the repository root) or when
# the package is installed (pip install -e .).
_CHECKOUT = str(Path(workflow.basedir).parent)
if sys.path[0] != _CHECKOUT:
    sys.path.insert(0, _CHECKOUT)

from pipeline.config import layout  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.plan import MEASURE_MODULES, Plan  # noqa: E402
from pipeline.records.stage import read_record, set_aside_damaged  # noqa: E402

# The interpreter running snakemake has the pipeline's dependencies (it just imported them).
PYTHON = sys.executable

try:
    PLAN = Plan(config["experiment"], list(config["overrides"]))
except PipelineError as error:
    fail(str(error))
for _model, _seed in PLAN.unknown_snapshot_models:
    print(f"warning: snapshots.models names {_model} seed {_seed}, which this experiment does not train "
          f"(workflow.objectives / workflow.seeds): it has no snapshots", file=sys.stderr)

BASE = PLAN.base
HYDRA_ARGS = PLAN.hydra_args  # every stage's command line starts with these words (each quoted by `:q`)
MODELS = PLAN.models  # every model the measurements run on: trained, the step-0 control, pretrained
PRETRAINED = PLAN.pretrained
MEASURE_MODELS = PLAN.measure_models
SNAPSHOT_MODELS = PLAN.snapshot_models  # trained models that keep snapshots
EVOLUTION_MODELS = PLAN.evolution_models  # those and the pretrained models with a revision grid
_CHOICES = PLAN.wildcard_choices()
TRAINED = _CHOICES["trained"]  # what rules train and dump from a checkpoint match
PRETRAINED_LABELS = _CHOICES["pretrained"]  # what rule hf_dump matches
DEFAULT_ARCHIVE = PLAN.default_archive

# ---------------------------------------------------------------- paths (pipeline/config/layout.py)
# Each as a pattern over the wildcards {objective} (the model), {seed} and {step}, or for one model.

RESULTS = PLAN.results
LOGS = PLAN.logs
REPORT_DIR = PLAN.report_dir


def _path(folder: Path, name: str) -> str:
    return os.path.normpath(str(folder / name)) if name else os.path.normpath(str(folder))


def results(pattern: str) -> str:
    """A path under the experiment's results folder that belongs to the workflow (benchmarks)."""
    return f"{RESULTS}/{pattern}"


def logs(pattern: str) -> str:
    """A log path pattern under logs/<experiment_name>/."""
    return f"{LOGS}/{pattern}"


def data_path(name: str) -> str:
    return _path(Path(str(BASE.paths.data)), name)


def tokenizer_path(name: str) -> str:
    return _path(Path(str(BASE.paths.tokenizer)), name)


def model_path(name: str = "", model: str = "{objective}", seed="{seed}") -> str:
    return _path(layout.model_folder(BASE, model, seed), name)


def dump_path(name: str = "", model: str = "{objective}", seed="{seed}") -> str:
    return _path(layout.dump_folder(BASE, model, seed), name)


def snapshot_path(name: str = "", model: str = "{objective}", seed="{seed}", step="{step}") -> str:
    return _path(layout.snapshot_dump(BASE, step, model, seed), name)


def table_path(table: str, suffix: str = ".csv") -> str:
    return _path(layout.table_path(BASE, table).with_suffix(suffix), "")


def part_path(table: str, model: str = "{objective}", seed="{seed}", suffix: str = ".csv") -> str:
    return _path(layout.part_path(BASE, table, model, seed).with_suffix(suffix), "")


def evolution_path(point: str = "{point}", model: str = "{objective}", seed="{seed}", suffix: str = ".csv") -> str:
    return _path(layout.evolution_part(BASE, point, model, seed).with_suffix(suffix), "")


def snapshot_run_dir() -> str:
    """Hydra's folder of a snapshot's dump job: beside the step folders, not in one."""
    return _path(Path(snapshot_path("")).parent, "hydra/step{step}")


def metrics_path(name: str) -> str:
    return _path(Path(str(BASE.paths.metrics)), name)


# ---------------------------------------------------------------- each job's settings hash (params:)
# Each equals the config_hash its stage records in stage.json.

DATA_HASH = PLAN.data_hash
TOKENIZER_HASH = PLAN.tokenizer_hash
ANALYSIS_HASH = PLAN.analysis_hash
EVOLUTION_HASH = PLAN.evolution_hash
REPORT_HASH = PLAN.report_hash


def train_hash(wildcards) -> str:
    return PLAN.train_hash(wildcards.objective, int(wildcards.seed))


def dump_hash(wildcards) -> str:
    return PLAN.dump_hash(wildcards.objective, int(wildcards.seed))


def init_dump_hash(wildcards) -> str:
    return PLAN.dump_hash("init", int(wildcards.seed))


def hf_dump_hash(wildcards) -> str:
    return PLAN.dump_hash(wildcards.objective, int(wildcards.seed))


def snapshot_dump_hash(wildcards) -> str:
    return PLAN.dump_hash(wildcards.objective, int(wildcards.seed), int(wildcards.step))


def measure_hash(wildcards) -> str:
    return PLAN.measure_hash(wildcards.measure, wildcards.objective, int(wildcards.seed))


def objective_args(wildcards) -> str:
    return PLAN.objective_args(wildcards.objective)


# ---------------------------------------------------------------- input functions

def corpus_inputs(wildcards) -> list[str]:
    """The user's corpus files are inputs of rule prepare, so that editing one reruns exactly what
    depends on it; the default archive is rule download's output; a named file that is not there is
    left out, so that a dry run needs no data (rule prepare then stops naming it)."""
    return [path for path in PLAN.corpus if path == DEFAULT_ARCHIVE or os.path.isfile(path)]


def model_dumps() -> list[str]:
    """The finished dump (stage.json) of every model, trained or the step-0 control."""
    return [dump_path("stage.json", o, s) for o, s in MODELS]


def measure_inputs(wildcards) -> dict:
    """A per-model measurement reads the model's dump; influence also its checkpoint (the step-0
    control's is written by rule dump_init)."""
    inputs = {"dump": dump_path("stage.json", wildcards.objective, wildcards.seed)}
    if wildcards.measure == "influence" and wildcards.objective not in PRETRAINED:  # theirs: the model's folder
        inputs["model"] = model_path(layout.MODEL_FILE, wildcards.objective, wildcards.seed)
    return inputs


def measure_module(wildcards) -> str:
    return MEASURE_MODULES[wildcards.measure]


def measure_parts(wildcards) -> list[str]:
    """The part tables a merged table is made of."""
    return [part_path(wildcards.measure, o, s) for o, s in MEASURE_MODELS[wildcards.measure]]


def metric_tables() -> list[str]:
    # the distances between models need two of them; each per-model table, a model it measures
    return [table_path(name) for name in ANALYSIS_HASH
            if (len(MODELS) >= 2 if name == "similarity" else MEASURE_MODELS[name])]


def kept_points(model: str, seed: int) -> list[str]:
    """The points of one model measured over training: `step<N>` for each analysed kept step its
    training reached (read from its train record once it is trained), then `final` (model.pt); a
    pretrained model's: its revision grid (known from its settings)."""
    if model in PRETRAINED:
        return PLAN.kept_points(model, seed, [])
    checkpoints.train.get(objective=model, seed=str(seed))  # until trained: not known yet
    outputs = getattr(read_record(model_path("", model, seed)), "outputs", None) or {}
    reached = [int(name[len("snapshots/step"):-len(".pt")]) for name in outputs
               if name.startswith("snapshots/step") and name.endswith(".pt")]
    return PLAN.kept_points(model, seed, reached)


def evolution_parts(wildcards=None) -> list[str]:
    return [evolution_path(point, o, s) for o, s in EVOLUTION_MODELS for point in kept_points(o, s)]


def snapshot_dumps(wildcards=None) -> list[str]:
    return [snapshot_path("stage.json", o, s, point[len("step"):]) for o, s in EVOLUTION_MODELS
            for point in kept_points(o, s) if point != "final"]


def evolution_inputs(wildcards) -> dict:
    """A point's measurement reads the finished model's dump, and a snapshot's its own dump."""
    inputs = {"final": dump_path("stage.json", wildcards.objective, wildcards.seed)}
    if wildcards.point != "final":
        inputs["snapshot"] = snapshot_path("stage.json", wildcards.objective, wildcards.seed,
                                           wildcards.point[len("step"):])
    return inputs


def evolution_tables() -> list[str]:
    """The evolution table, and with a pretrained revision grid the revisions' check."""
    return ([table_path("evolution")] if EVOLUTION_MODELS else []) + \
        ([table_path("revisions")] if PLAN.revision_models else [])


def revision_dumps(wildcards=None) -> list[str]:
    """The dump of every revision of every pretrained grid model, its final one included."""
    return [*[dump_path("stage.json", o, s) for o, s in PLAN.revision_models],
            *[snapshot_path("stage.json", o, s, point[len("step"):]) for o, s in PLAN.revision_models
              for point in kept_points(o, s) if point != "final"]]


# An output that is missing or has another size than its stage recorded makes its stage not done: it
# is set aside now, before the DAG is built; since every artifact is a target of rule all, snakemake
# then reruns that stage, and what depends on it because its output is newer.
for _problem in set_aside_damaged(RESULTS):
    print(f"warning: {_problem}: its stage is redone", file=sys.stderr)


wildcard_constraints:
    objective=_CHOICES["objective"],
    seed=r"0|[1-9][0-9]*",
    measure=_CHOICES["measure"],
    step=r"0|[1-9][0-9]*",
    point=r"final|step(0|[1-9][0-9]*)",
