"""Amount of influence: how much removing one token from attention changes the other tokens.

    python -m analysis.influence experiment=default objective=mt seed=1 [overrides]

METHODS.md §6 (Voita, Sennrich and Titov 2019, §5.2). For an influencing token j and a layer n:
layers 1..n-1 run as usual; at layer n, j is no key for any other token (that layer only); the
layer-n states of the other tokens of the sentence, with and without the removal, form a pair.
Pairs are pooled over all influencing tokens of a frequency bucket, and the influence is the
distance (`analysis.influence.measure`, PWCCA by default, symmetric mean) between the two pooled
views. The influencing token's own position is in neither view. With a causal model the tokens
before j cannot change; `analysis.influence.affected: all` keeps them (as the definition reads),
`later` keeps only the tokens after j.

Batched: the states of every layer are computed once per batch of sentences; then, per layer n,
one pass of block n over one copy of the layer n-1 states per influencing token (each copy with
its own key removed) gives every removal at once. `removed_states` is that step;
`removed_states_direct` is the definition computed one token and one layer at a time from the
embeddings up, the reference it is tested and benchmarked against.

Buckets are compared at equal sizes (see analysis.buckets): influencing tokens are drawn at random
per bucket until it holds as many pairs as the smallest measured bucket (capped by
`max_pairs_per_bucket`). The pairs are accumulated as float64 moments, so memory does not grow with
their number. Reads the checkpoint (model.pt) and the dump's token table (the same sentences and
frequency ranks as every other measurement); writes `<paths.metrics>/influence/<objective>/seed<n>.csv`
with the columns `measure, objective, seed, layer, bucket, distance, n_pairs`.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.config import cli, require
from pipeline.model import Block, Model, load_model
from pipeline.runtime import resolve_device
from pipeline.store import PipelineError, sha256_file
from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

from .buckets import plan_buckets
from .dumps import Dump, bucket_edges, bucket_index, bucket_labels, dump_folder, load_dump, model_file
from .measures import Moments, distance_from_moments
from .tables import part_path, section, write_table

log = logging.getLogger("analysis.influence")



# ---------------------------------------------------------------- the removal pass

def removal_mask(mask: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """mask (R, 1, T, T) bool, True = may attend; removed (R,) a key position per row -> the mask
    with that key hidden from every query but itself (its own row is never read; it keeps a key)."""
    T = mask.shape[-1]
    ar = torch.arange(T, device=mask.device)
    is_key = ar[None, :] == removed[:, None]                 # (R, T): the removed key
    other_query = ar[None, :] != removed[:, None]            # (R, T): queries other than the token itself
    drop = other_query[:, None, :, None] & is_key[:, None, None, :]  # (R, 1, T, T)
    return mask & ~drop


@torch.no_grad()
def removed_states(block: Block, prev: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor,
                   removed: torch.Tensor) -> torch.Tensor:
    """Layer-n states with one key removed, for many removals in one pass.

    block: block n; prev (B, T, d_model) layer n-1 states of B sentences; mask (B, 1, T, T) their
    attention mask; owner (R,) the sentence of each removal; removed (R,) its key position.
    Returns (R, T, d_model): row r = block n applied to sentence owner[r] without key removed[r].
    """
    return block(prev[owner], removal_mask(mask[owner], removed))


@torch.no_grad()
def removed_states_direct(model: Model, tokens: torch.Tensor, removed: int, layer: int) -> torch.Tensor:
    """The definition, one removal at a time (the reference for tests and benchmarks): run one
    sentence tokens (1, T) from its embeddings through layers 1..layer-1 as usual and layer `layer`
    with key position `removed` hidden from every other token. Returns its layer states (T, d_model)."""
    mask = model.stack.mask(tokens)
    x = model.stack.embed(tokens)
    for n, block in enumerate(model.stack.blocks[:layer], start=1):
        x = block(x, removal_mask(mask, torch.tensor([removed], device=tokens.device)) if n == layer else mask)
    return x[0]


# ---------------------------------------------------------------- choosing influencing tokens

def choose_influencers(dump: Dump, cfg: DictConfig) -> tuple[dict[int, list[int]], np.ndarray, str]:
    """Influencing tokens per bucket, drawn so that every measured bucket holds about the same number
    of pairs. Returns (sentence id -> positions of its influencing tokens, the bucket of every dump
    row (-1: none), a description for the log)."""
    icfg = cfg.analysis.influence
    t = dump.tokens
    rng = np.random.default_rng(int(cfg.analysis.sample_seed))
    sentences = np.unique(t["sentence_id"])
    limit = icfg.max_sentences
    if limit is not None and limit < len(sentences):
        sentences = np.sort(rng.choice(sentences, size=int(limit), replace=False))
    in_subset = np.isin(t["sentence_id"], sentences)
    edges = bucket_edges(cfg)
    labels = bucket_labels(edges)
    bucket = bucket_index(t["freq_rank"], edges)
    pairs_of = pairs_per_influencer(t["position"], t["sentence_length"], str(icfg.affected), causal=dump.kind == "lm")
    candidates = {label: np.flatnonzero(in_subset & (bucket == i) & (pairs_of > 0)) for i, label in enumerate(labels)}
    available = {label: int(pairs_of[rows].sum()) for label, rows in candidates.items()}
    plan = plan_buckets(labels, available, floor=float(cfg.analysis.min_bucket_tokens) * dump.d_model,
                        cap=icfg.max_pairs_per_bucket, cap_key="analysis.influence.max_pairs_per_bucket")
    chosen: dict[int, list[int]] = defaultdict(list)
    for label in plan.measured:
        rows = rng.permutation(candidates[label])
        # the first influencers whose pairs reach the bucket's size (the last one may overshoot by < T)
        take = rows[: int(np.searchsorted(np.cumsum(pairs_of[rows]), plan.size)) + 1]
        for row in take:
            chosen[int(t["sentence_id"][row])].append(int(t["position"][row]))
    keep = np.full(len(bucket), -1)
    measured = [labels.index(label) for label in plan.measured]
    keep[np.isin(bucket, measured)] = bucket[np.isin(bucket, measured)]
    return dict(chosen), keep, plan.describe()


def pairs_per_influencer(position: np.ndarray, length: np.ndarray, affected: str, causal: bool) -> np.ndarray:
    """How many pairs a token contributes: the other tokens of its sentence (all of them, or with
    `affected=later` in a causal model only those after it)."""
    if affected not in ("all", "later"):
        raise PipelineError(f"setting analysis.influence.affected={affected!r}: expected all or later")
    if affected == "later" and causal:
        return length - position - 1
    return length - 1


# ---------------------------------------------------------------- the measurement

def sentence_batches(lengths: dict[int, int], counts: dict[int, int], batch_tokens: int) -> list[list[int]]:
    """Sentence ids grouped by length so that (removals in the batch) x (longest + 2) <= batch_tokens."""
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    batches, current, rows = [], [], 0
    for s in order:
        width = lengths[s] + 2
        if current and (rows + counts[s]) * width > batch_tokens:
            batches.append(current)
            current, rows = [], 0
        current.append(s)
        rows += counts[s]
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def accumulate(model: Model, dump: Dump, chosen: dict[int, list[int]], row_bucket: np.ndarray,
               n_buckets: int, affected: str, batch_tokens: int, device: torch.device) -> dict[tuple[int, int], Moments]:
    """Moments of the (with, without removal) pairs per (layer, bucket), over the chosen influencers."""
    from tqdm.auto import tqdm

    t = dump.tokens
    ids, starts = np.unique(t["sentence_id"], return_index=True)
    first_row = {int(s): int(r) for s, r in zip(ids, starts)}  # rows of a sentence are contiguous
    lengths = {s: int(t["sentence_length"][first_row[s]]) for s in chosen}
    moments: dict[tuple[int, int], Moments] = {}
    causal_later = affected == "later" and model.stack.causal
    batches = sentence_batches(lengths, {s: len(p) for s, p in chosen.items()}, batch_tokens)
    for batch in tqdm(batches, desc=f"influence {dump.objective} seed {dump.seed}", unit="batch", disable=None):
        T = max(lengths[s] for s in batch) + 2
        tokens = torch.full((len(batch), T), PAD_ID, dtype=torch.long)
        owner, removed, buckets = [], [], []
        for b, s in enumerate(batch):
            n, r0 = lengths[s], first_row[s]
            tokens[b, 0], tokens[b, 1:n + 1], tokens[b, n + 1] = BOS_ID, torch.from_numpy(t["token_id"][r0:r0 + n]), EOS_ID
            for p in chosen[s]:
                owner.append(b)
                removed.append(p + 1)  # padded index of x_p: after bos
                buckets.append(int(row_bucket[r0 + p]))
        tokens = tokens.to(device)
        mask = model.stack.mask(tokens)
        _, states = model.encode(tokens, return_states=True)  # L + 1 tensors (B, T, d_model)
        owner_t, removed_t = torch.tensor(owner, device=device), torch.tensor(removed, device=device)
        # which (row, position) pairs count: real tokens of the owner sentence, not the removed one
        ar = torch.arange(T, device=device)
        n_of = torch.tensor([lengths[s] for s in batch], device=device)[owner_t]
        valid = (ar[None, :] >= 1) & (ar[None, :] <= n_of[:, None]) & (ar[None, :] != removed_t[:, None])
        if causal_later:
            valid &= ar[None, :] > removed_t[:, None]
        bucket_t = torch.tensor(buckets, device=device)
        for layer, block in enumerate(model.stack.blocks, start=1):
            with_removal = removed_states(block, states[layer - 1], mask, owner_t, removed_t)  # (R, T, d)
            usual = states[layer][owner_t]                                                     # (R, T, d)
            for k in range(n_buckets):
                sel = valid & (bucket_t == k)[:, None]
                if bool(sel.any()):
                    moments.setdefault((layer, k), Moments(usual.shape[-1], device=device)).add(usual[sel], with_removal[sel])
    return moments


def influence_rows(model: Model, dump: Dump, cfg: DictConfig, device: torch.device) -> list[dict]:
    icfg = cfg.analysis.influence
    batch_tokens = require(cfg, "analysis.influence.batch_tokens", lambda v: isinstance(v, int) and v > 0,
                           "must be a positive integer")
    chosen, row_bucket, described = choose_influencers(dump, cfg)
    labels = bucket_labels(bucket_edges(cfg))
    log.info("%s seed %d: %d influencing tokens in %d sentences; pairs %s", dump.objective, dump.seed,
             sum(map(len, chosen.values())), len(chosen), described)
    moments = accumulate(model, dump, chosen, row_bucket, len(labels), str(icfg.affected), int(batch_tokens), device)
    measure = str(icfg.measure)
    return [{"measure": measure, "objective": dump.objective, "seed": dump.seed, "layer": layer,
             "bucket": labels[k], "distance": distance_from_moments(measure, m, cfg, "analysis.influence.measure"),
             "n_pairs": m.n}
            for (layer, k), m in sorted(moments.items())]


def load_matching_model(cfg: DictConfig, dump: Dump, device: torch.device) -> Model:
    """The checkpoint the dump was made from (checked by its sha256), in eval mode on `device`."""
    path = model_file(cfg, dump.objective, dump.seed)
    if not path.is_file():
        raise PipelineError(f"{path} not found: influence needs the trained model of {dump.folder}")
    expected = dump.meta.get("checkpoint_sha256")
    if expected and sha256_file(path) != expected:
        raise PipelineError(f"{path} is not the checkpoint {dump.folder} was made from: dump it again")
    model, _ = load_model(path, map_location="cpu")
    return model.to(device).float().eval()


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    dump = load_dump(dump_folder(cfg, str(cfg.objective.name), int(cfg.seed)))
    model = load_matching_model(cfg, dump, device)
    rows = influence_rows(model, dump, cfg, device)
    out = write_table(part_path(cfg, "influence"), "influence", rows, section(cfg, "influence"), started)
    log.info("wrote %s (%d rows)", out, len(rows))


main = cli(run)

if __name__ == "__main__":
    main()
