"""The part of the config each stage depends on: what its settings hash covers, so that a changed
setting reruns exactly the stages it affects."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.compose import RUNTIME_KEYS, to_plain
from pipeline.config.grid import INIT, kept_steps
from pipeline.config.pretrained import spec_of


def data_config(cfg: DictConfig) -> dict:
    """What the corpus split depends on (not the tokenizer): the data settings, and how the text is
    normalised when it is read (a split made before, or otherwise, is stale)."""
    data = to_plain(cfg.data)
    data.pop("tokenizer", None)
    return {"data": data, "normalize": NORMALISATION}


def tokenizer_config(cfg: DictConfig) -> dict:
    """What the vocabulary and freq.tsv depend on: the data (data.max_len included: the counts leave
    out the sentences training drops as too long), the tokenizer settings, and that counting rule."""
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


def init_config(cfg: DictConfig) -> dict:
    """What the untrained stack of a seed depends on: the vocabulary (data, tokenizer), the model
    settings and the seed; not the objective's or the training settings, which never touch it."""
    return {**tokenizer_config(cfg), "model": to_plain(cfg.model), "objective": INIT, "seed": int(cfg.seed)}


# What `normalise` does, in the data stage's config (`data_config`): a split made otherwise is stale.
NORMALISATION = "NFC; U+200B, U+200C, U+200D, U+2060, U+FEFF removed; whitespace collapsed"


# What freq.tsv counts, in the tokenizer stage's config (`tokenizer_config`): counts made otherwise are stale.
FREQ_COUNTS = "train.mono sentences of at most data.max_len tokens (as training)"


def pretrained_dump_config(cfg: DictConfig, label: str) -> dict:
    """What the dump of pretrained model `label` depends on: the data split (probe set and training
    source side), the model's settings, the dump settings but the device, and for an mlm its masking.
    Pure settings (no file is read): the workflow computes it while it parses."""
    spec = spec_of(cfg, label)
    mlm = (spec.role or OmegaConf.select(cfg, "objective.kind")) == "mlm"
    # the masked run's settings matter to an mlm only
    settings = {k: v for k, v in to_plain(cfg.dump).items()
                if k != "device" and (mlm or k not in ("mlm_masked", "mask_seed", "mlm_maskings"))}
    out = {**data_config(cfg), "pretrained": {"name": spec.name, "role": spec.role, "revision": spec.revision,
                                              "dtype": spec.dtype},
           "batch_tokens": int(OmegaConf.select(cfg, "pretrained.batch_tokens", default=2048)), "dump": settings}
    if mlm:
        out["masking"] = _masking(cfg)
    return out


def _masking(cfg: DictConfig) -> dict[str, float]:
    objective = cfg.objective
    return {key: float(objective.get(key, default)) for key, default in
            (("mask_prob", 0.15), ("mask_token_prob", 0.8), ("random_token_prob", 0.1))}


def report_config(cfg: DictConfig) -> dict:
    """What the report depends on besides its input files: the resolved config it shows, without
    Hydra's own keys and the settings that change how stages run but not what they compute."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in RUNTIME_KEYS}
        return node

    plain = to_plain(cfg)
    plain.pop("hydra", None)
    return strip(plain)
