"""Hydra configs: composing them outside a CLI, the part of a config each stage depends on, and the
thin wrapper every `python -m pipeline.<stage>` entry point shares."""
from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.machine.faults import exit_on_machine_fault, job_errors_reported_by_hydra, reporting_machine_faults
from pipeline.errors import PipelineError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("pipeline")

# Settings that change how a stage runs but not what it computes: they never trigger a rerun.
RUNTIME_KEYS = {"progress", "device", "threads"}


def compose(overrides: Sequence[str] = (), config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """Compose the primary config with Hydra overrides, as the CLI would (for tests and workflow)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return cfg


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def data_config(cfg: DictConfig) -> dict:
    """What the corpus split depends on (not the tokenizer): the data settings, and how the text is
    normalised when it is read (a split made before, or otherwise, is stale)."""
    from pipeline.corpus import NORMALISATION

    data = to_plain(cfg.data)
    data.pop("tokenizer", None)
    return {"data": data, "normalize": NORMALISATION}


def tokenizer_config(cfg: DictConfig) -> dict:
    """What the vocabulary and freq.tsv depend on: the data (data.max_len included: the counts leave
    out the sentences training drops as too long), the tokenizer settings, and that counting rule."""
    from pipeline.tokenizer import FREQ_COUNTS

    return {**data_config(cfg), "tokenizer": to_plain(cfg.data.tokenizer), "freq_counts": FREQ_COUNTS}


def max_minutes(cfg: DictConfig) -> float | None:
    """`train.max_minutes` for this run's objective: a number (every objective), null (no cap), or a
    mapping from objective name or kind to minutes, e.g. {mt: 12, lm: 6, mlm: 20} (the name first,
    so mt_td may differ from mt; an objective in neither: `default`, else no cap)."""
    value = OmegaConf.select(cfg, "train.max_minutes", default=None)
    if not isinstance(value, DictConfig):
        return value
    for key in (str(cfg.objective.name), str(cfg.objective.kind), "default"):
        if key in value:
            return value[key]
    return None


def train_config(cfg: DictConfig) -> dict:
    """What a trained model depends on: data, tokenizer, model, objective, training, seed (a
    per-objective `train.max_minutes` resolved first, so changing another objective's cap does not
    make this model stale)."""
    train = {k: v for k, v in to_plain(cfg.train).items() if k not in RUNTIME_KEYS}
    if "max_minutes" in train:
        train["max_minutes"] = max_minutes(cfg)
    out = {**tokenizer_config(cfg), "model": to_plain(cfg.model), "objective": to_plain(cfg.objective),
           "train": train, "seed": int(cfg.seed)}
    kept = kept_steps(cfg)
    if kept is not None:  # only for the models that keep snapshots: every other model's hash is unchanged
        out["snapshots"] = kept
    return out


# ---------------------------------------------------------------- snapshots (evolution over training)

def snapshot_models(cfg: DictConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every model whose training keeps snapshots (`snapshots.models`)."""
    named = OmegaConf.to_container(OmegaConf.select(cfg, "snapshots.models") or DictConfig({}), resolve=True)
    return [(str(o), int(s)) for o, seeds in named.items() for s in seeds or []]


def kept_steps(cfg: DictConfig) -> list[int] | None:
    """The steps at which cfg's model keeps its weights while it trains (`snapshots.keep`, sorted),
    or None when the model is not one of `snapshots.models`."""
    if (str(cfg.objective.name), int(cfg.seed)) not in snapshot_models(cfg):
        return None
    return sorted({int(s) for s in cfg.snapshots.keep})


def analysed_steps(cfg: DictConfig, reached: list[int]) -> list[int]:
    """Of the kept steps a training `reached`, those `snapshots.steps` names (null: all)."""
    wanted = OmegaConf.select(cfg, "snapshots.steps")
    return sorted(reached) if wanted is None else sorted(set(reached) & {int(s) for s in wanted})


def snapshot_file(cfg: DictConfig, step: int) -> Path:
    """The weights of cfg's model after `step` optimiser steps: <paths.model>/snapshots/step<N>.pt."""
    return Path(str(cfg.paths.model)) / "snapshots" / f"step{int(step)}.pt"


def snapshot_dump(cfg: DictConfig, step: int) -> Path:
    """Where the dump of that snapshot goes: <paths.snapshots>/step<N>/."""
    return Path(str(cfg.paths.snapshots)) / f"step{int(step)}"


def check_snapshot_settings(cfg: DictConfig) -> None:
    """`snapshots.*` and `snapshot`: types and ranges, naming the key."""
    models = OmegaConf.select(cfg, "snapshots.models")
    require(cfg, "snapshots.models", lambda v: v is None or (isinstance(v, DictConfig) and all(
        isinstance(seeds, ListConfig) and all(is_int(s) and s >= 0 for s in seeds) for seeds in v.values())),
        "expected a mapping from objective name to a list of seeds, e.g. {mt: [1], lm: [1]}")
    if models is not None and INIT in models:
        raise PipelineError(f"setting snapshots.models: {INIT!r} is never trained, so it has no snapshots "
                            "(its one state is step 0 of every objective)")
    steps = lambda v: isinstance(v, ListConfig) and all(is_int(s) and s >= 0 for s in v)  # noqa: E731
    require(cfg, "snapshots.keep", lambda v: steps(v) and len(v) > 0, "expected a non-empty list of steps >= 0")
    require(cfg, "snapshots.steps", lambda v: v is None or steps(v), "expected null or a list of steps >= 0")
    wanted = OmegaConf.select(cfg, "snapshots.steps")
    if wanted is not None:
        missing = sorted({int(s) for s in wanted} - {int(s) for s in cfg.snapshots.keep})
        if missing:
            raise PipelineError(f"setting snapshots.steps: {missing} are not in snapshots.keep="
                                f"{list(cfg.snapshots.keep)}: only kept steps can be analysed")
    require(cfg, "snapshots.mlm_maskings", positive_int, "must be a positive integer")
    require(cfg, "snapshot", lambda v: v is None or (is_int(v) and v >= 0), "expected null or a step >= 0")


# The objective name of the step-0 control (conf/objective/init.yaml): the untrained stack of a seed,
# dumped and measured like a model. It is never trained.
INIT = "init"


def init_config(cfg: DictConfig) -> dict:
    """What the untrained stack of a seed depends on: the vocabulary (data, tokenizer), the model
    settings and the seed; not the objective's or the training settings, which never touch it."""
    return {**tokenizer_config(cfg), "model": to_plain(cfg.model), "objective": INIT, "seed": int(cfg.seed)}


def trained_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every model the workflow trains: workflow.objectives x workflow.seeds."""
    seeds = OmegaConf.to_container(cfg.workflow.seeds, resolve=True) or {}
    return [(str(o), int(s)) for o in cfg.workflow.objectives for s in seeds.get(str(o)) or []]


def init_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """(INIT, seed) for every seed some trained model uses (the union of workflow.seeds), in order;
    none when workflow.init is false."""
    if not OmegaConf.select(cfg, "workflow.init", default=True):
        return []
    return [(INIT, seed) for seed in sorted({seed for _, seed in trained_grid(cfg)})]


def pretrained_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """(label, 0) of every pretrained model of `pretrained.models` (pipeline/hf.py), in their order."""
    from pipeline.hf import SEED, specs

    return [(label, SEED) for label in specs(cfg)]


def model_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """Every model the analyses measure: the trained grid, the step-0 control of each seed, then the
    pretrained models."""
    return [*trained_grid(cfg), *init_grid(cfg), *pretrained_grid(cfg)]


def is_int(v: Any) -> bool:
    """An integer setting (YAML booleans are ints to Python: refused)."""
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return is_int(v) and v > 0


def positive_int_or_none(v: Any) -> bool:
    return v is None or positive_int(v)


def require(cfg: DictConfig, key: str, check: Callable[[Any], bool], what: str) -> Any:
    """Fetch `key` and fail with a message naming it when `check` rejects the value."""
    value = OmegaConf.select(cfg, key)
    if not check(value):
        raise PipelineError(f"setting {key}={value!r} is invalid: {what}")
    return value


def number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_seed(cfg: DictConfig) -> int:
    """`seed`: a non-negative integer (it names folders and seeds numpy, which refuses negatives)."""
    return require(cfg, "seed", lambda v: is_int(v) and v >= 0, "expected a non-negative integer")


# A plain folder name: results/<name>/, reports/<name>/ and logs/<name>/ stay inside their folders.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_experiment_name(cfg: DictConfig) -> str:
    """`experiment_name`: a plain name (letters, digits, _ . + -; not empty, no separators, not
    starting with a dot), so that the folders named after it are inside results/ and reports/."""
    return require(cfg, "experiment_name", lambda v: (isinstance(v, (str, int)) and not isinstance(v, bool)
                                                        and _PLAIN_NAME.fullmatch(str(v)) is not None),
                   "expected a plain name of letters, digits and _ . + - (not empty, no / or \\, not "
                   "starting with a dot): the results go to results/<name>/")


def check_data_settings(cfg: DictConfig) -> None:
    """The corpus split's and the tokenizer's settings (types and ranges; files are checked on reading)."""
    text = lambda v: isinstance(v, str) and bool(v)  # noqa: E731
    require(cfg, "data.format", lambda v: v in ("archive", "parallel"), "must be 'archive' or 'parallel'")
    if cfg.data.format == "parallel":
        for key in ("data.src_file", "data.tgt_file"):
            require(cfg, key, text, "must be set when data.format=parallel")
    else:
        require(cfg, "data.member", text, "must name the file inside the archive")
        require(cfg, "data.archive", lambda v: v is None or text(v), "expected null or a path")
        require(cfg, "data.url", lambda v: cfg.data.archive is not None or text(v), "must be a URL")
    require(cfg, "data.split_seed", lambda v: is_int(v) and v >= 0, "must be a non-negative integer")
    require(cfg, "data.max_pairs", positive_int_or_none, "must be null or a positive integer")
    for key in ("data.valid_size", "data.test_size", "data.probe_size", "data.max_len",
                "data.tokenizer.max_train_sentences"):
        require(cfg, key, positive_int, "must be a positive integer")
    require(cfg, "data.tokenizer.vocab_size", lambda v: is_int(v) and v >= 262,
            "must be an integer >= 262 (5 special + 256 byte pieces + the characters and subwords)")
    require(cfg, "data.tokenizer.character_coverage", lambda v: number(v) and 0 < v <= 1, "must be in (0, 1]")


def check_train_settings(cfg: DictConfig) -> None:
    """Every training setting of a trained objective (the device's presence aside: a runtime fact)."""
    check_seed(cfg)
    check_snapshot_settings(cfg)
    for key in ("train.max_tokens", "train.max_steps", "train.eval_every", "train.patience", "data.max_len",
                "model.n_layers", "model.d_model", "model.n_heads", "model.d_mlp", "model.n_ctx"):
        require(cfg, key, positive_int, "expected a positive integer")
    if str(cfg.objective.kind) == "mt":
        require(cfg, "model.n_dec_layers", positive_int, "expected a positive integer")
    require(cfg, "train.warmup_steps", lambda v: is_int(v) and v >= 0, "expected a non-negative integer")
    for key in ("train.dev_sentences", "train.bleu_sentences"):
        require(cfg, key, positive_int_or_none, "expected null or a positive integer")
    require(cfg, "train.threads", positive_int_or_none, "expected null or a positive integer")
    require(cfg, "train.lr", lambda v: number(v) and v > 0, "expected a positive number")
    require(cfg, "train.clip_norm", lambda v: number(v) and v > 0, "expected a positive number")
    for key in ("train.weight_decay", "train.min_delta"):
        require(cfg, key, lambda v: number(v) and v >= 0, "expected a non-negative number")
    require(cfg, "train.min_lr_ratio", lambda v: number(v) and 0 <= v <= 1, "expected a number in [0, 1]")
    require(cfg, "train.betas", lambda v: isinstance(v, ListConfig) and len(v) == 2 and all(
        number(b) and 0 <= b < 1 for b in v), "expected two numbers in [0, 1)")
    require(cfg, "train.decay", lambda v: v in ("inverse_sqrt", "cosine", "linear", "constant"),
            "expected inverse_sqrt, cosine, linear or constant")
    require(cfg, "train.precision", lambda v: v in ("auto", "bf16", "fp32"), "expected auto, bf16 or fp32")
    require(cfg, "train.compile", lambda v: v in ("auto", True, False), "expected auto, true or false")
    for key in ("train.deterministic", "train.progress", "model.tie_embeddings"):
        require(cfg, key, lambda v: isinstance(v, bool), "expected true or false")
    require(cfg, "train.device", lambda v: isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda")),
            "expected auto, cpu, cuda or cuda:N")
    require(cfg, "objective.kind", lambda v: v in ("mt", "lm", "mlm"), "expected mt, lm or mlm")
    require(cfg, "model.norm", lambda v: v in ("pre", "post"), "expected pre or post")
    require(cfg, "model.n_heads", lambda v: cfg.model.d_model % v == 0, f"must divide model.d_model={cfg.model.d_model}")
    require(cfg, "model.n_ctx", lambda v: v >= cfg.data.max_len + 2,
            f"must be at least data.max_len + 2 = {cfg.data.max_len + 2}")
    minutes = lambda v: v is None or (number(v) and v > 0)  # noqa: E731
    require(cfg, "train.max_minutes", lambda v: minutes(v) or (isinstance(v, DictConfig) and all(
        minutes(m) for m in v.values())), "expected null, a positive number of minutes, or a mapping from "
        "objective name or kind to minutes")
    require(cfg, "train.plateau_min_evals", lambda v: v is None or (is_int(v) and v >= 4),
            "expected null (no plateau stop) or an integer >= 4 (evaluations)")
    for key in ("objective.token_dropout", "objective.label_smoothing", "model.dropout"):
        require(cfg, key, lambda v: number(v) and 0 <= v < 1, "expected a number in [0, 1)")
    if str(cfg.objective.kind) == "mlm":
        for key in ("objective.mask_prob", "objective.mask_token_prob", "objective.random_token_prob"):
            require(cfg, key, lambda v: number(v) and 0 <= v <= 1, "expected a number in [0, 1]")


def check_dump_settings(cfg: DictConfig) -> None:
    check_seed(cfg)
    check_snapshot_settings(cfg)
    require(cfg, "dump.batch_tokens", positive_int, "must be a positive integer")
    require(cfg, "dump.dtype", lambda v: v in ("float16", "float32"), "expected float16 or float32")
    require(cfg, "dump.mask_seed", is_int, "must be an integer")
    require(cfg, "dump.mlm_maskings", positive_int, "must be a positive integer")
    require(cfg, "dump.mlm_masked", lambda v: isinstance(v, bool), "expected true or false")
    require(cfg, "dump.device", lambda v: isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda")),
            "expected auto, cpu, cuda or cuda:N")


def check_model_settings(cfg: DictConfig) -> None:
    """All settings of one model's stages (data, tokenizer, training unless it is the step-0
    control, dump): what the workflow checks for every job before any runs."""
    check_data_settings(cfg)
    if str(cfg.objective.kind) == INIT:
        check_seed(cfg)
    else:
        check_train_settings(cfg)
    check_dump_settings(cfg)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr, force=False)


def cli(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """Wrap `fn(cfg)` as a Hydra entry point: bad input ends with one clear line and exit code 2, and
    so does a fault of the machine (a full or read-only disk, a file that does not unpickle; Ctrl-C:
    exit code 130), with what to do; see `pipeline.faults`."""
    import hydra

    @reporting_machine_faults
    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    @job_errors_reported_by_hydra
    @functools.wraps(fn)
    def main(cfg: DictConfig) -> None:
        setup_logging()
        made = _folders_made_by_hydra(cfg)
        try:
            check_experiment_name(cfg)
            check_seed(cfg)
            fn(cfg)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            _remove_if_unused(made)
            sys.exit(2)
        except BaseException as e:  # a full or read-only disk, a damaged file, Ctrl-C: the machine's, not the input's
            exit_on_machine_fault(e, lambda: _remove_if_unused(made))
            raise

    @functools.wraps(main)
    def entry() -> None:
        # Hydra makes its run folder, named after experiment_name, before `main` runs: a name given on
        # the command line is checked first, so that a refused one (../x: outside results/) makes none.
        for arg in sys.argv[1:]:
            key, eq, value = arg.partition("=")
            if eq and key.lstrip("+~") == "experiment_name":
                try:
                    check_experiment_name(OmegaConf.create({"experiment_name": value.strip("'\"")}))
                except PipelineError as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.exit(2)
        main()

    return entry


def _folders_made_by_hydra(cfg: DictConfig) -> list[Path]:
    """The run folder Hydra made for this run and the folders above it that hold nothing else (so it
    made them too), innermost first; never above the working directory, nor, for a run folder
    outside it, above paths.results."""
    from hydra.core.hydra_config import HydraConfig

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    except Exception:  # noqa: BLE001 - not run by Hydra
        return []
    cwd = Path.cwd().resolve()
    top = cwd if cwd in run_dir.parents else Path(str(OmegaConf.select(cfg, "paths.results") or run_dir)).resolve()
    made = [run_dir]
    for parent in run_dir.parents:
        if parent == top.parent or top not in (parent, *parent.parents) or len(list(parent.iterdir())) != 1:
            break
        made.append(parent)
    return made


def _remove_if_unused(folders: list[Path]) -> None:
    """A refused run leaves no folder behind: delete Hydra's run folder (its own files only) and the
    folders it created above it, where nothing else was put since."""
    import shutil

    logging.shutdown()  # the job's log file is in the run folder
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            continue
        if i == 0:
            if all(p.name in (".hydra",) or p.suffix == ".log" for p in folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        elif not any(folder.iterdir()):
            folder.rmdir()
