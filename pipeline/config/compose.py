"""Composing the Hydra config (conf/) outside a command line, as the commands and the workflow see it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
log = logging.getLogger("pipeline")

# Settings that change how a stage runs but not what it computes: they never trigger a rerun.
RUNTIME_KEYS = {"progress", "device", "threads"}


def compose(overrides: Sequence[str] = (), config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """Compose the primary config with Hydra overrides, as the CLI would (for tests and workflow)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return cfg


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
