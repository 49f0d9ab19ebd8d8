"""The grid of models an experiment runs (trained objectives x seeds, the step-0 control, pretrained
models) and the training steps it keeps."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipeline.config.pretrained import specs

# The objective name of the step-0 control (conf/objective/init.yaml): the untrained stack of a seed,
# dumped and measured like a model. It is never trained.
INIT = "init"


def snapshot_models(cfg: DictConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every model whose training keeps snapshots (`snapshots.models`)."""
    named = OmegaConf.to_container(OmegaConf.select(cfg, "snapshots.models") or DictConfig({}), resolve=True)
    return [(str(o), int(s)) for o, seeds in named.items() for s in seeds or []]


def kept_steps(cfg: DictConfig) -> list[int] | None:
    """The steps at which cfg's model keeps its weights while it trains (`snapshots.keep`, sorted),
    or None when the model is not one of `snapshots.models`."""
    if (str(cfg.label), int(cfg.seed)) not in snapshot_models(cfg):
        return None
    return sorted({int(s) for s in cfg.snapshots.keep})


def analysed_steps(cfg: DictConfig, reached: list[int]) -> list[int]:
    """Of the kept steps a training `reached`, those `snapshots.steps` names (null: all)."""
    wanted = OmegaConf.select(cfg, "snapshots.steps")
    return sorted(reached) if wanted is None else sorted(set(reached) & {int(s) for s in wanted})


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
    """(label, 0) of every pretrained model of `pretrained.models` (pipeline/model/hf.py), in their order."""
    return [(label, seed) for label, spec in specs(cfg).items() for seed in spec.seeds]


def model_grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """Every model the analyses measure: the trained grid, the step-0 control of each seed, then the
    pretrained models."""
    return [*trained_grid(cfg), *init_grid(cfg), *pretrained_grid(cfg)]
