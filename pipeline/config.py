"""Hydra configs: composing them outside a CLI, the part of a config each stage depends on, and the
thin wrapper every `python -m pipeline.<stage>` entry point shares."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from .store import PipelineError

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
    """What the corpus split depends on (not the tokenizer)."""
    data = to_plain(cfg.data)
    data.pop("tokenizer", None)
    return {"data": data}


def tokenizer_config(cfg: DictConfig) -> dict:
    return {**data_config(cfg), "tokenizer": to_plain(cfg.data.tokenizer)}


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
    return {**tokenizer_config(cfg), "model": to_plain(cfg.model), "objective": to_plain(cfg.objective),
            "train": train, "seed": int(cfg.seed)}


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


def model_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """Every model the analyses measure: the trained grid, then the step-0 control of each seed."""
    return [*trained_grid(cfg), *init_grid(cfg)]


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


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr, force=False)


def cli(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """Wrap `fn(cfg)` as a Hydra entry point: bad input ends with one clear line and exit code 2."""
    import hydra

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    @functools.wraps(fn)
    def main(cfg: DictConfig) -> None:
        setup_logging()
        try:
            fn(cfg)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return main
