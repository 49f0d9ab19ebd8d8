"""The part of the config each stage depends on: what its settings hash covers, so that a changed
setting reruns exactly the stages it affects."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.analysis import setting
from pipeline.config.compose import RUNTIME_KEYS, to_plain
from pipeline.config.grid import INIT, kept_steps
from pipeline.config.pretrained import spec_of, specs


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
    step = snapshot_step(cfg)
    spec = spec.of(int(cfg.seed), step)  # the repository and revision of this seed and grid step
    if step is not None:  # a revision of the model's grid, its masked run with the snapshots' maskings
        settings["mlm_maskings"] = int(cfg.snapshots.mlm_maskings)
    out = {**data_config(cfg), "pretrained": {"name": spec.name, "role": spec.role, "revision": spec.revision,
                                              "dtype": spec.dtype},
           "batch_tokens": int(OmegaConf.select(cfg, "pretrained.batch_tokens", default=2048)), "dump": settings}
    if mlm:
        out["masking"] = _masking(cfg)
    if step is not None:
        out["snapshot"] = step
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


# The shared analysis keys each measurement reads besides its own section.
_SHARED_KEYS = {"similarity": ("min_samples_per_dim", "sample_seed", "bootstrap"),
                "change": ("buckets", "min_samples_per_dim", "sample_seed", "bootstrap"),
                "influence": ("buckets", "min_samples_per_dim", "sample_seed", "bootstrap"),
                "mi": ("sample_seed", "bootstrap"), "neighbours": ("sample_seed", "bootstrap"),
                "readout": ("bootstrap",)}


def section(cfg: DictConfig, name: str) -> dict:
    """The settings a measurement depends on: its own section plus the shared analysis keys it reads
    (so that, e.g., new bucket edges rerun change and influence but not the task distances)."""
    a = cfg.analysis
    shared = _SHARED_KEYS.get(name, ("sample_seed",))
    out = {"measure": name, **{key: to_plain(a[key]) for key in shared}, name: to_plain(a[name])}
    if name in ("change", "influence"):  # their distances are computed as analysis.similarity says
        out["estimator"] = {key: to_plain(a.similarity[key]) for key in ("ridge", "svcca_variance")}
    if name == "examples":  # its neighbours are found as the neighbours measure finds them
        out["metric"] = to_plain(a.neighbours.metric)
    if name == "similarity" and OmegaConf.select(cfg, "pretrained.models"):
        # with a pretrained model the distances compare words: what a word's state is matters too
        out["word_state"] = OmegaConf.select(cfg, "pretrained.word_state")
    return out


def mi_cluster_counts(cfg: DictConfig) -> list[int]:
    """The cluster counts MI is measured with for cfg's model: analysis.mi.n_clusters, then the sweep
    when cfg.seed is the first seed of its objective in workflow.seeds, and for every pretrained model
    (the sweep is the costly part; one seed per objective shows the trend)."""
    main = int(setting(cfg, "analysis.mi.n_clusters"))
    sweep = setting(cfg, "analysis.mi.sweep") or []
    seeds = OmegaConf.select(cfg, f"workflow.seeds.{cfg.label}")
    first = seeds is not None and len(seeds) > 0 and int(seeds[0]) == int(cfg.seed)
    # a pretrained model: its first seed (most publish one)
    pretrained = specs(cfg).get(str(cfg.label))
    first = first or (pretrained is not None and int(cfg.seed) == pretrained.seeds[0])
    return [main] + ([int(c) for c in sweep if int(c) != main] if first else [])


def mi_settings(cfg: DictConfig) -> dict:
    """What one model's MI part depends on: the MI section, the shared keys, and its cluster counts
    (reordering workflow.seeds moves the sweep to another model, which must rerun)."""
    return {**section(cfg, "mi"), "clusters": mi_cluster_counts(cfg)}


def evolution_settings(cfg: DictConfig) -> dict:
    """What a step's evolution rows depend on: the evolution section, the MI, neighbours, similarity
    and change settings it reads, the shared keys, and the maskings of an MLM's masked rows."""
    a = cfg.analysis
    return {"measure": "evolution", **{key: to_plain(a[key]) for key in ("min_samples_per_dim", "sample_seed",
                                                                          "bootstrap")},
            **{name: to_plain(a[name]) for name in ("evolution", "mi", "neighbours", "similarity", "change",
                                                                 "readout")},
            "mlm_maskings": int(cfg.snapshots.mlm_maskings)}


def is_init(cfg: DictConfig) -> bool:
    """True for the step-0 control (objective.kind init), which is built, not trained."""
    return str(cfg.objective.kind) == INIT


def snapshot_step(cfg: DictConfig) -> int | None:
    """The kept training step this run dumps (`snapshot`), or None for the finished model."""
    step = OmegaConf.select(cfg, "snapshot", default=None)
    return None if step is None else int(step)


def dump_config(cfg: DictConfig) -> dict:
    """What a dump depends on: the trained model's config (the step-0 control: `init_config`) and the
    dump settings (not the device); a snapshot's also its step and its maskings."""
    settings = {k: v for k, v in to_plain(cfg.dump).items() if k != "device"}
    step = snapshot_step(cfg)
    if step is None:
        return {**(init_config(cfg) if is_init(cfg) else train_config(cfg)), "dump": settings}
    settings["mlm_maskings"] = int(cfg.snapshots.mlm_maskings)
    return {**train_config(cfg), "dump": settings, "snapshot": step}
