"""The experiment as the workflow runs it: every job's resolved config, the grid of models, and the
settings hash of every job, checked all at once before any job starts.

workflow/rules/common.smk builds one `Plan` while the Snakefile is parsed and turns a `PipelineError`
from it into one line `error: ...` and exit code 2. Rerun triggers: each rule puts its job's hash
(`Plan.*_hash`, the same function its stage records in stage.json) in `params:`, so editing a YAML
file under conf/ or an entry of `overrides` reruns exactly the jobs whose hash changes. The overrides
reach the jobs' command lines through `hydra_args`, not through `params:`, so a setting that one
stage ignores never reruns that stage.
"""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.config import layout
from pipeline.config.analysis import check_analysis_settings
from pipeline.config.checks import check_experiment_name, check_model_settings
from pipeline.config.compose import CONFIG_DIR, compose
from pipeline.config.grid import INIT, analysed_steps, init_grid, pretrained_grid, snapshot_models, trained_grid
from pipeline.config.pretrained import specs
from pipeline.config.stages import (
    data_config,
    dump_config,
    evolution_settings,
    max_minutes,
    mi_settings,
    pretrained_dump_config,
    report_config,
    section,
    tokenizer_config,
    train_config,
)
from pipeline.errors import PipelineError
from pipeline.model import hf
from pipeline.prepare.corpus import corpus_files
from pipeline.records.files import config_hash

# Overrides the workflow sets itself, per job: users must not set them in `overrides`.
_RESERVED = re.compile(r"^(\+\+|\+|~)?((experiment|objective|seed|snapshot)=|hydra[./])")
# What a path passed as a Hydra override value may contain without Hydra-level quoting.
_PLAIN_PATH = re.compile(r"^[\w./@+-]+$")
# Per-model measurements: the module each runs (FIRST_SEED_ONLY, the t-SNE pictures and the neighbours
# explorer's examples: the first seed of each model; every other: every model, the step-0 control included).
MEASURE_MODULES = {"change": "analysis.measures.change", "influence": "analysis.measures.influence",
                   "mi": "analysis.measures.mutual_info", "neighbours": "analysis.measures.neighbours",
                   "tsne": "analysis.measures.tsne", "readout": "analysis.measures.readout",
                   "examples": "analysis.measures.examples"}
FIRST_SEED_ONLY = ("tsne", "examples")
# The kinds of model whose dump holds a readout (pipeline/dump/readout.py): measured by analysis.measures.readout.
READOUT_KINDS = ("lm", "mlm")


def choices(group: str) -> list[str]:
    """The configs of one group (conf/<group>/*.yaml), by name."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


class Plan:
    """One experiment with the workflow's `overrides`: composed, checked, and laid out as jobs."""

    def __init__(self, experiment: str, overrides: list[str]) -> None:
        if experiment not in choices("experiment"):
            raise PipelineError(
                f"config key 'experiment': {experiment!r} is not an experiment; choose one of "
                f"{', '.join(choices('experiment'))} (the files in {CONFIG_DIR / 'experiment'})")
        for override in overrides:
            if _RESERVED.match(override):
                raise PipelineError(
                    f"config key 'overrides': {override!r} sets what the workflow sets itself "
                    "(experiment: use the config key 'experiment'; objective and seed: use the "
                    "workflow.objectives / workflow.seeds settings; snapshot: snapshots.steps; hydra.*: fixed per rule)")
        self.experiment, self.overrides = experiment, list(overrides)
        # every stage's command line starts with these words
        self.hydra_args = [f"experiment={experiment}", *self.overrides]
        self.base = base = self._compose()
        try:
            check_experiment_name(base)
        except PipelineError as error:
            self._refuse(error, f"experiment {experiment}")
        self.results = self._plain_path(layout.results(base), "paths.results")
        self.logs = f"logs/{base.experiment_name}"
        self.report_dir = self._plain_path(layout.report_file(base).parent, "paths.report")
        if base.data.format == "parallel":
            for key in ("data.src_file", "data.tgt_file"):
                if not OmegaConf.select(base, key):
                    raise PipelineError(
                        f"setting {key} must be set when data.format=parallel (experiment {experiment}); "
                        "e.g. --config 'overrides=[\"data.src_file=/data/train.en\",\"data.tgt_file=/data/train.de\"]'")
        # the models: label -> spec of the pretrained ones, then the grid
        _check_layout(base)
        self.pretrained = specs(base)
        _check_grid(base, bool(self.pretrained))
        if not isinstance(OmegaConf.select(base, "workflow.init"), bool):
            raise PipelineError(f"setting workflow.init={OmegaConf.select(base, 'workflow.init')!r}: "
                                "expected true or false")
        self.trained = trained_grid(base)  # (model, seed) of every trained model, in workflow.objectives' order
        self.init = init_grid(base)  # the step-0 control of every seed in use
        self.pretrained_grid = pretrained_grid(base)  # each dumped by rule hf_dump, never trained
        self.models = [*self.trained, *self.init, *self.pretrained_grid]  # every model the measurements run on
        self.roles = {label: self._pretrained_role(label) for label in self.pretrained}
        self.first_seeds = [(o, s) for i, (o, s) in enumerate(self.models) if all(o != p for p, _ in self.models[:i])]
        self.measure_models = {name: self.first_seeds if name in FIRST_SEED_ONLY else self.models
                               for name in MEASURE_MODULES}
        self.measure_models["readout"] = [(o, s) for o, s in self.models if self.kind(o) in READOUT_KINDS] \
            if OmegaConf.select(base, "dump.readout", default=True) else []
        named = snapshot_models(base)
        self.snapshot_models = [model for model in named if model in self.trained]
        self.unknown_snapshot_models = [model for model in named if model not in self.trained]
        # the pretrained models whose revisions form a grid over training (pretrained.models.<label>.revisions)
        self.revision_models = [(label, seed) for label, spec in self.pretrained.items() if spec.revisions
                                for seed in spec.seeds]
        self.evolution_models = [*self.snapshot_models, *self.revision_models]  # measured over training
        self.data_hash = config_hash(data_config(base))
        self.tokenizer_hash = config_hash(tokenizer_config(base))
        self.analysis_hash = {name: config_hash(section(base, name)) for name in ("similarity", *MEASURE_MODULES)}
        self.evolution_hash = config_hash(evolution_settings(base))
        self.report_hash = config_hash(report_config(base))
        for model, seed in self.models:  # every model composed now: a bad setting fails here
            self.job_config(model, seed)
        try:  # the analysis settings are the same for every model: checked once
            check_analysis_settings(base)
        except PipelineError as error:
            self._refuse(error, f"experiment {experiment}")
        self.corpus = [str(path) for path in corpus_files(base)]
        # the default archive (none named) is downloaded by rule download
        self.default_archive = None if base.data.format == "parallel" or base.data.archive else self.corpus[0]

    # ------------------------------------------------------------ composing

    def _compose(self, *extra: str) -> DictConfig:
        """The resolved config of the experiment, the overrides and `extra`, as the stages see it."""
        try:
            cfg = compose([*self.hydra_args, *extra])
            OmegaConf.to_container(cfg, resolve=True)  # interpolation errors surface now, not in a job
            return cfg
        except Exception as error:  # Hydra's and OmegaConf's errors: name the override at fault
            culprit = next((o for o in self.overrides if not self._composes(o)), None)
            if culprit is not None:
                raise PipelineError(f"config key 'overrides': {culprit!r} is not a valid Hydra override "
                                    f"for experiment {self.experiment}: {error}") from None
            raise PipelineError(f"experiment={self.experiment} with overrides {self.overrides} {' '.join(extra)} "
                                f"does not compose: {error}") from None

    def _composes(self, override: str) -> bool:
        try:
            OmegaConf.to_container(compose([f"experiment={self.experiment}", override]), resolve=True)
            return True
        except Exception:
            return False

    def _refuse(self, error: Exception, where: str) -> None:
        """Stop for a setting a stage would refuse, naming the override that set it when there is one."""
        culprit = next((o for o in self.overrides if o.lstrip("+~").split("=", 1)[0] in str(error)), None)
        raise PipelineError(f"config key 'overrides': {culprit!r}: {error}" if culprit else f"{where}: {error}")

    @staticmethod
    def _plain_path(path: Path, key: str) -> str:
        value = str(path)
        if not _PLAIN_PATH.match(value):
            raise PipelineError(f"setting {key}={value!r}: use a path of letters, digits and "
                                "_ . / @ + - only (it is passed to Hydra on the command line)")
        return value

    def _pretrained_role(self, label: str) -> str:
        """The role of a pretrained model, needed before any job runs (it picks the objective config of
        its jobs): stated, or read from its config.json in a local folder or the cache."""
        spec = self.pretrained[label]
        role = hf.role_without_loading(spec.of(spec.seeds[0]))
        if role is None:
            raise PipelineError(
                f"setting pretrained.models.{label}.role is not set and {spec.name} is not in the local Hugging Face "
                f"cache to read it from: set it to mlm, lm or mt, or fetch the model first (`{spec.fetch_command()}`)")
        return role

    def kind(self, model: str) -> str:
        """What a model is: a pretrained model's role, else its objective's kind (mt | lm | mlm | init)."""
        return self.roles[model] if model in self.pretrained else str(self._model_config(model).objective.kind)

    def objective_args(self, model: str) -> str:
        """The Hydra overrides that select one model's config in a job: `objective=<name>`, or for a
        pretrained model `objective=<role> label=<label>` (labels are plain words: no quoting)."""
        if model in self.pretrained:
            return f"objective={self.roles[model]} label={model}"
        return f"objective={model}"

    @functools.cache
    def _model_config(self, model: str) -> DictConfig:
        return self._compose(*self.objective_args(model).split())

    @functools.cache
    def job_config(self, model: str, seed: int) -> DictConfig:
        """The resolved config of one model: what `python -m pipeline.train|dump` will see. Composed once
        per model, the seed set afterwards (Hydra composes in ~0.4 s, and every SLURM job parses the
        workflow twice): the seed selects no config file, and what derives from it (paths.*) interpolates."""
        cfg = copy.deepcopy(self._model_config(model))
        cfg.seed = seed
        try:  # every setting's type and range, as each stage checks them before its work
            check_model_settings(cfg)
        except PipelineError as error:
            self._refuse(error, f"experiment {self.experiment} ({model} seed {seed})")
        if config_hash(tokenizer_config(cfg)) != self.tokenizer_hash:
            raise PipelineError(f"conf/objective/{model}.yaml changes data settings; every model "
                                "shares one data split and tokenizer (rule prepare)")
        return cfg

    # ------------------------------------------------------------ each job's settings hash

    def train_hash(self, model: str, seed: int) -> str:
        """What a model depends on: data, tokenizer, model, objective, training, seed."""
        return config_hash(train_config(self.job_config(model, seed)))

    def max_minutes(self, model: str, seed: int) -> float | None:
        return max_minutes(self.job_config(model, seed))

    def dump_hash(self, model: str, seed: int, step: int | None = None) -> str:
        """What a dump depends on (pipeline.config.stages.dump_config): its model's config and the dump
        settings; a snapshot's (`step`) also its step and maskings; a pretrained model's its own settings."""
        cfg = self.job_config(model, seed)
        if model in self.pretrained:
            if step is not None:
                cfg = copy.deepcopy(cfg)
                cfg.snapshot = int(step)
            return config_hash(pretrained_dump_config(cfg, model))
        if step is not None:
            cfg = copy.deepcopy(cfg)
            cfg.snapshot = int(step)
        return config_hash(dump_config(cfg))

    def measure_hash(self, measure: str, model: str, seed: int) -> str:
        """A measurement's settings hash; for MI also the cluster counts this model gets (the sweep runs
        on the first seed of each model, so reordering workflow.seeds moves it)."""
        if measure == "mi":
            return config_hash(mi_settings(self.job_config(model, seed)))
        return self.analysis_hash[measure]

    def kept_points(self, model: str, seed: int, reached: list[int]) -> list[str]:
        """The points of one model measured over training, of the kept steps its training `reached`:
        `step<N>` for each that snapshots.steps names, then `final`; a pretrained model's: every step of
        its revision grid, then `final` (its `revision`)."""
        if model in self.pretrained:
            return [layout.point_name(step) for step in self.pretrained[model].steps] + ["final"]
        return [layout.point_name(step) for step in analysed_steps(self.job_config(model, seed), reached)] + ["final"]

    def wildcard_choices(self) -> dict[str, str]:
        """What each wildcard may match."""
        return {"objective": "|".join(map(re.escape, [*choices("objective"), *self.pretrained])),
                "trained": "|".join(re.escape(o) for o in choices("objective") if o != INIT),
                "pretrained": "|".join(map(re.escape, self.pretrained)) or "(?!)",  # none: matches nothing
                "measure": "|".join(MEASURE_MODULES)}


def _check_grid(cfg: DictConfig, pretrained: bool) -> None:
    """workflow.objectives and workflow.seeds, in words a user can act on."""
    objectives = OmegaConf.to_container(cfg.workflow.objectives, resolve=True)
    seeds = OmegaConf.to_container(cfg.workflow.seeds, resolve=True)
    known = choices("objective")
    if (not isinstance(objectives, list) or not (objectives or pretrained)
            or not all(isinstance(o, str) for o in objectives)):
        raise PipelineError(f"setting workflow.objectives={objectives!r}: expected a list of names, not empty unless "
                            "pretrained.models names a model")
    for objective in objectives:
        if objective == INIT:
            raise PipelineError(f"setting workflow.objectives: {INIT!r} is the step-0 control, never trained; "
                                "it is dumped and measured for every seed in use unless workflow.init=false")
        if objective not in known:
            raise PipelineError(f"setting workflow.objectives: {objective!r} has no conf/objective/{objective}.yaml "
                                f"(known: {', '.join(known)})")
    if len(set(objectives)) != len(objectives):
        raise PipelineError(f"setting workflow.objectives={objectives}: a name is repeated")
    for objective in objectives:
        runs = seeds.get(objective) if isinstance(seeds, dict) else None
        if (not isinstance(runs, list) or not runs or len(set(runs)) != len(runs)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in runs)):
            raise PipelineError(f"setting workflow.seeds.{objective}={runs!r}: expected a non-empty list of distinct "
                                "non-negative integers, one entry per objective in workflow.objectives")


def _check_layout(cfg: DictConfig) -> None:
    """Every model's folders must differ: paths.model, paths.dump and paths.snapshots name the model and
    its seed (by default ${label}/seed${seed})."""
    for key, folder in (("paths.model", layout.model_folder), ("paths.dump", layout.dump_folder),
                        ("paths.snapshots", lambda c, m, s: layout.snapshot_dump(c, 0, m, s))):
        pattern = str(folder(cfg, "{objective}", "{seed}"))
        if "{objective}" not in pattern or "{seed}" not in pattern:
            raise PipelineError(f"setting {key}={pattern!r}: it must name the model (${{label}}) and the seed "
                                "(${seed}), or every model would share one folder")
