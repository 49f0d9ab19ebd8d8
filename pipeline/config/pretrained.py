"""The pretrained models an experiment names (`pretrained.models`), read from its settings alone.

    pretrained:
      models:
        bert: {name: bert-base-cased, role: mlm}
        gpt2: {name: gpt2}                      # role inferred from its config.json: lm

The label is the model's name everywhere downstream: its dump is `dumps/<label>/seed0/` (every
pretrained model is "seed 0": there is one of it). Finding, reading and loading the files is
pipeline.model.hf's; nothing here reads a file, so the workflow reads these settings while it parses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import PipelineError

ROLES = ("mlm", "lm", "mt")


SEED = 0  # the seed every pretrained model is listed under


DTYPES = ("float32", "float16", "bfloat16")


WORD_STATES = ("first", "mean")


_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class HFSpec:
    """One pretrained model of an experiment, as its settings give it."""

    label: str
    name: str
    role: str | None = None       # None: inferred from config.json
    revision: str | None = None   # a branch, tag or commit of the hub repository (None: what is cached)
    dtype: str | None = None      # the dtype the model runs in (None: its config's torch_dtype, else float32)

    @property
    def is_folder(self) -> bool:
        return Path(self.name).expanduser().is_dir()

    def fetch_command(self) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.name}{revision}"


def _setting(label: str, key: str) -> str:
    return f"pretrained.models.{label}.{key}"


def specs(cfg: DictConfig) -> dict[str, HFSpec]:
    """The pretrained models of `cfg` by label, checked (label, name, role, revision, dtype)."""
    models = OmegaConf.select(cfg, "pretrained.models", default=None)
    if models is None:
        return {}
    models = OmegaConf.to_container(models, resolve=True) if OmegaConf.is_config(models) else models
    if not isinstance(models, dict):
        raise PipelineError(f"setting pretrained.models={models!r}: expected a mapping label -> "
                            "{name: <hub name or folder>, role: mlm|lm|mt}")
    objectives = _objective_names()
    out = {}
    for label, entry in models.items():
        label = str(label)
        if not _LABEL.match(label):
            raise PipelineError(f"setting pretrained.models.{label}: a label is letters, digits and _ . - "
                                "(starting with a letter); it names the model's folders and table rows")
        if label in objectives:
            raise PipelineError(f"setting pretrained.models.{label}: {label!r} is an objective's name "
                                f"(conf/objective/{label}.yaml); give the pretrained model another label")
        if entry is None:
            continue  # `pretrained.models.<label>=null` drops a model an experiment names
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise PipelineError(f"setting {_setting(label, 'name')}={entry!r}: expected a hub name "
                                "(e.g. bert-base-cased) or a local folder")
        unknown = sorted(set(entry) - {"name", "role", "revision", "dtype"})
        if unknown:
            raise PipelineError(f"setting pretrained.models.{label}: unknown keys {unknown} "
                                "(known: name, role, revision, dtype)")
        role, dtype, revision = entry.get("role"), entry.get("dtype"), entry.get("revision")
        if role is not None and role not in ROLES:
            raise PipelineError(f"setting {_setting(label, 'role')}={role!r}: expected one of {', '.join(ROLES)} "
                                "or null (inferred from the model's config)")
        if dtype is not None and dtype not in DTYPES:
            raise PipelineError(f"setting {_setting(label, 'dtype')}={dtype!r}: expected one of "
                                f"{', '.join(DTYPES)} or null (the model's own)")
        if revision is not None and not isinstance(revision, str):
            raise PipelineError(f"setting {_setting(label, 'revision')}={revision!r}: expected a branch, "
                                "tag or commit hash")
        out[label] = HFSpec(label, str(entry["name"]), role, revision, dtype)
    return out


def _objective_names() -> set[str]:
    from pipeline.config.compose import CONFIG_DIR

    return {p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")}


def spec_of(cfg: DictConfig, label: str) -> HFSpec:
    models = specs(cfg)
    if label not in models:
        raise PipelineError(f"{label!r} is not a pretrained model of experiment {cfg.experiment_name} "
                            f"(pretrained.models: {', '.join(models) or 'none'})")
    return models[label]


def word_state(cfg: DictConfig) -> str:
    value = OmegaConf.select(cfg, "pretrained.word_state", default="first")
    if value not in WORD_STATES:
        raise PipelineError(f"setting pretrained.word_state={value!r}: expected first or mean")
    return str(value)


