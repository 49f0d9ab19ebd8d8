"""Every setting's type and range, checked before a stage starts its work: a message names the key
and the value."""
from __future__ import annotations

import re
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config.grid import INIT
from pipeline.errors import PipelineError


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
    require(cfg, "train.dev_maskings", positive_int, "expected a positive integer (MLM: maskings of each dev sentence)")
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
    require(cfg, "dump.readout", lambda v: isinstance(v, bool), "expected true or false")
    require(cfg, "dump.readout_sentences", lambda v: v is None or (is_int(v) and v > 0),
            "expected null (every probe sentence) or how many probe sentences the lens reads, a positive integer")
    require(cfg, "dump.tuned_lens", lambda v: is_int(v) and v >= 0,
            "expected how many training sentences to fit the tuned lens on (0: none)")
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
