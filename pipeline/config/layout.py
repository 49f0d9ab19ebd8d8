"""Where everything lies: the one home of every path of an experiment, for any model, seed or step.

The folders are settings (conf/config.yaml, `paths.*`, interpolated on the model's name and seed);
this module resolves them for a model that is not the config's own, and names the files inside:

    <paths.data>/, <paths.tokenizer>/                  the corpus split and the tokenizer
    <paths.model>/model.pt, snapshots/step<N>.pt       a trained model and the weights it kept
    <paths.dump>/                                      its dump (pipeline.dump.format)
    <paths.snapshots>/step<N>/                         the dump of a kept step
    <paths.metrics>/<table>.csv                        a metric table; one model's part:
    <paths.metrics>/<table>/<model>/seed<n>.csv        ... and of the evolution over training:
    <paths.metrics>/evolution/<model>/seed<n>/<point>.csv   (point: step<N> or final)
    <paths.report>/report.html

Every function takes the model and seed as values, or as the workflow's wildcards ("{objective}",
"{seed}"), which come back in the path as they went in: the workflow's rules and the stages spell
each path once, here.
"""
from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig

MODEL_FILE = "model.pt"
REPORT_FILE = "report.html"


def _of(cfg: DictConfig, model: str | None, seed: int | str | None) -> DictConfig:
    """cfg with its model and seed set (those of cfg when None): what its `paths.*` interpolate on."""
    if model is None and seed is None:
        return cfg
    other = copy.deepcopy(cfg)
    if model is not None:
        other.label = str(model)
    if seed is not None:
        other.seed = seed
    return other


def _path(value) -> Path:
    return Path(str(value))


def results(cfg: DictConfig) -> Path:
    return _path(cfg.paths.results)


def model_folder(cfg: DictConfig, model: str | None = None, seed: int | str | None = None) -> Path:
    return _path(_of(cfg, model, seed).paths.model)


def model_file(cfg: DictConfig, model: str | None = None, seed: int | str | None = None) -> Path:
    return model_folder(cfg, model, seed) / MODEL_FILE


def snapshot_file(cfg: DictConfig, step: int | str, model: str | None = None, seed: int | str | None = None) -> Path:
    """The weights of a model after `step` optimiser steps: <paths.model>/snapshots/step<N>.pt."""
    return model_folder(cfg, model, seed) / "snapshots" / f"step{step}.pt"


def dump_folder(cfg: DictConfig, model: str | None = None, seed: int | str | None = None) -> Path:
    return _path(_of(cfg, model, seed).paths.dump)


def snapshot_dump(cfg: DictConfig, step: int | str, model: str | None = None, seed: int | str | None = None) -> Path:
    """Where the dump of a kept step goes: <paths.snapshots>/step<N>/."""
    return _path(_of(cfg, model, seed).paths.snapshots) / f"step{step}"


def table_path(cfg: DictConfig, table: str) -> Path:
    """A merged metric table: <paths.metrics>/<table>.csv."""
    return _path(cfg.paths.metrics) / f"{table}.csv"


def part_path(cfg: DictConfig, table: str, model: str | None = None, seed: int | str | None = None) -> Path:
    """One model's rows of `table`: <paths.metrics>/<table>/<model>/seed<n>.csv (the config's own model
    and seed when not given)."""
    model = str(cfg.label) if model is None else model
    seed = int(cfg.seed) if seed is None else seed
    return _path(cfg.paths.metrics) / table / str(model) / f"seed{seed}.csv"


def evolution_part(cfg: DictConfig, point: str, model: str | None = None, seed: int | str | None = None) -> Path:
    """One point's part of the evolution table: <paths.metrics>/evolution/<model>/seed<n>/<point>.csv,
    point `step<N>` or `final` (`point_name`)."""
    return part_path(cfg, "evolution", model, seed).with_suffix("") / f"{point}.csv"


def point_name(step: int | None) -> str:
    """A point of the evolution over training: step<N>, or final for the finished model."""
    return "final" if step is None else f"step{int(step)}"


def report_file(cfg: DictConfig) -> Path:
    return _path(cfg.paths.report) / REPORT_FILE
