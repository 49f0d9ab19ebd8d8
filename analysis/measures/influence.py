"""Amount of influence: how much removing one token from attention changes the other tokens.

    python -m analysis.measures.influence experiment=default objective=mt seed=1 [overrides]

METHODS.md §6 (Voita, Sennrich and Titov 2019, §5.2). For an influencing token j and a layer n:
layers 1..n-1 run as usual; at layer n, j is no key for any other token (that layer only); the
layer-n states of the other tokens of the sentence, with and without the removal, form a pair.
Pairs are pooled over all influencing tokens of a frequency bucket, and the influence is the
distance (`analysis.influence.measure`, PWCCA by default, symmetric mean) between the two pooled
views. The influencing token's own position is in neither view. With a causal model the tokens
before j cannot change (their states are bit for bit the same without j): they would enter as
identical pairs and dilute the distance in proportion to j's position, so that a sentence-final
token would read as uninfluential by construction. `analysis.influence.affected: auto` (the
default) therefore keeps only the tokens after j in a causal model (lm, lm_td) and every other
token otherwise (mt, mlm); `all` and `later` force either. The resolved choice is in every row.

Batched: the states of every layer are computed once per batch of sentences; then, per layer n,
one pass of block n over one copy of the layer n-1 states per influencing token (each copy with
its own key removed) gives every removal at once. `removed_states` is that step;
`removed_states_direct` is the definition computed one token and one layer at a time from the
embeddings up, the reference it is tested and benchmarked against.

Sample sizes (see analysis.buckets): a bucket is measured only with at least
`analysis.min_samples_per_dim` x d_model pairs from at least `analysis.influence.min_influencers`
distinct influencing tokens; the others are left out and the table's record names them. Every
measured bucket is measured with exactly the same number of pairs (the smallest measured bucket's,
capped by `max_pairs_per_bucket`): influencing tokens are drawn at random until the bucket holds
that many pairs and that many influencers, and the pairs are then subsampled to the size, keeping
at least one pair of every drawn influencer. The pairs are kept on the analysis device (at most
buckets x layers x max_pairs_per_bucket x 2 rows of d_model floats). Each row also holds
`shuffled`: the same two views with the rows of the view without removal permuted (one seeded
permutation per bucket, the same at every layer), what "no correspondence" reads at that n.
Reads the checkpoint (model.pt) and the dump's token table (the same sentences and frequency ranks
as every other measurement); writes `<paths.metrics>/influence/<objective>/seed<n>.csv` with the
columns `measure, objective, seed, layer, bucket, affected, distance, shuffled, n_pairs,
n_influencers, ci_low, ci_high` (the last two: the bootstrap interval over the influencing
tokens' sentences, the shared plan of analysis.bootstrap; its replicates in `seed<n>.npz` beside it).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import Dump, bucket_edges, bucket_labels, load_dump
from analysis.io.tables import write_table
from analysis.measures.influencers import affected_positions, choose_influencers, exact_subset, resolve_affected
from analysis.stats import bootstrap
from analysis.stats.buckets import BucketPlan, shuffle_seed
from analysis.stats.distances import check_measure, distance, paired, replicates
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, model_file, part_path
from pipeline.config.stages import section
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device
from pipeline.model.transformer import Block, Model, load_model
from pipeline.prepare.tokenizer import BOS_ID, EOS_ID, PAD_ID
from pipeline.records.files import sha256_file

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


class OwnStack:
    """How `collect_pairs` runs one of our models: [bos] x_1 .. x_n [eos], row p at padded index p + 1."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.causal = model.stack.causal
        self.n_layers = len(model.stack.blocks)

    def inputs(self, token_ids: list[np.ndarray], sentence_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T), the dump position at each padded index (B, T), -1 where none)."""
        T = max(len(x) for x in token_ids) + 2
        tokens = torch.full((len(token_ids), T), PAD_ID, dtype=torch.long)
        position = torch.full((len(token_ids), T), -1, dtype=torch.long)
        for b, x in enumerate(token_ids):
            n = len(x)
            tokens[b, 0], tokens[b, 1:n + 1], tokens[b, n + 1] = BOS_ID, torch.from_numpy(x), EOS_ID
            position[b, 1:n + 1] = torch.arange(n)
        return tokens, position

    def states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        self._mask = self.model.stack.mask(tokens)
        return self.model.encode(tokens, return_states=True)[1]  # L + 1 tensors (B, T, d_model)

    def removed(self, layer: int, states: list[torch.Tensor], tokens: torch.Tensor, owner: torch.Tensor,
                removed: torch.Tensor) -> torch.Tensor:
        return removed_states(self.model.stack.blocks[layer - 1], states[layer - 1], self._mask, owner, removed)


class PretrainedStack:
    """How `collect_pairs` runs a pretrained Hugging Face model (analysis/measures/hf_influence.py): the
    tokenizer's own input of each probe sentence, its rows at the non-special positions."""

    def __init__(self, stack, inputs: dict[int, tuple[np.ndarray, np.ndarray]], causal: bool, pad_id: int) -> None:
        from analysis.measures.hf_influence import stack_blocks

        self.stack, self.sentence_inputs, self.causal, self.pad_id = stack, inputs, causal, pad_id
        self.n_layers = len(stack_blocks(stack))

    def inputs(self, token_ids: list[np.ndarray], sentence_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        fed = [self.sentence_inputs[s] for s in sentence_ids]
        T = max(len(ids) for ids, _ in fed)
        tokens = torch.full((len(fed), T), self.pad_id, dtype=torch.long)
        position = torch.full((len(fed), T), -1, dtype=torch.long)
        for b, ((ids, kept), x) in enumerate(zip(fed, token_ids)):
            if not np.array_equal(ids[kept], x):
                raise PipelineError(f"probe sentence {sentence_ids[b]} tokenises otherwise than when it was dumped: "
                                    "dump the model again")
            tokens[b, :len(ids)] = torch.from_numpy(ids)
            position[b, torch.from_numpy(kept)] = torch.arange(len(kept))
        self._attention = (torch.arange(T)[None, :] < torch.tensor([len(i) for i, _ in fed])[:, None]).long()
        return tokens, position

    @torch.no_grad()
    def states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        self._attention = self._attention.to(tokens.device)
        return list(self.stack(input_ids=tokens, attention_mask=self._attention, output_hidden_states=True).hidden_states)

    def removed(self, layer: int, states: list[torch.Tensor], tokens: torch.Tensor, owner: torch.Tensor,
                removed: torch.Tensor) -> torch.Tensor:
        from analysis.measures.hf_influence import removed_hidden_states

        return removed_hidden_states(self.stack, tokens[owner], self._attention[owner], layer, removed)


@torch.no_grad()
def collect_pairs(runner: OwnStack | PretrainedStack, dump: Dump, chosen: dict[int, list[int]], row_bucket: np.ndarray,
                  n_buckets: int, affected: str, batch_tokens: int, device: torch.device
                  ) -> tuple[dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]], dict[int, np.ndarray],
                             np.ndarray]:
    """The (without removal, with removal) pairs per (layer, bucket) over the chosen influencers:
    (layer, bucket) -> two (m, d_model) float32 tensors on `device`; per bucket the influencing
    token (a running index) of each of its m rows, the same rows at every layer; and the sentence id
    of every influencing token (by running index). `runner` feeds the model (OwnStack, PretrainedStack;
    one of our Models is run by an OwnStack)."""
    from tqdm.auto import tqdm

    runner = OwnStack(runner) if isinstance(runner, Model) else runner
    t = dump.tokens
    ids, starts = np.unique(t["sentence_id"], return_index=True)
    first_row = {int(s): int(r) for s, r in zip(ids, starts)}  # rows of a sentence are contiguous
    lengths = {s: int(t["sentence_length"][first_row[s]]) for s in chosen}
    chunks: dict[tuple[int, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    influencers: dict[int, list[np.ndarray]] = defaultdict(list)
    counter, sentence_of = 0, []
    batches = sentence_batches(lengths, {s: len(p) for s, p in chosen.items()}, batch_tokens)
    for batch in tqdm(batches, desc=f"influence {dump.objective} seed {dump.seed}", unit="batch", disable=None):
        tokens, position = runner.inputs([t["token_id"][first_row[s]:first_row[s] + lengths[s]] for s in batch], batch)
        owner, removed_pos, buckets = [], [], []
        for b, s in enumerate(batch):
            for p in chosen[s]:
                sentence_of.append(s)
                owner.append(b)
                removed_pos.append(p)
                buckets.append(int(row_bucket[first_row[s] + p]))
        tokens, position = tokens.to(device), position.to(device)
        states = runner.states(tokens)  # L + 1 tensors (B, T, d_model)
        owner_t, removed_t = torch.tensor(owner, device=device), torch.tensor(removed_pos, device=device)
        # padded index of each removed token, and the pairs each removal makes: the other rows of its
        # sentence (affected=later: only those after it)
        row_position = position[owner_t]                                               # (R, T)
        removed_index = (row_position == removed_t[:, None]).long().argmax(dim=1)      # (R,)
        valid = affected_positions(row_position, removed_t, affected)
        T = tokens.shape[1]
        bucket_t = torch.tensor(buckets, device=device)
        who = np.arange(counter, counter + len(owner))[:, None].repeat(T, axis=1)  # (R, T) influencer of each pair
        counter += len(owner)
        selections = {}
        for k in range(n_buckets):
            sel = valid & (bucket_t == k)[:, None]
            if bool(sel.any()):
                selections[k] = sel
                influencers[k].append(who[sel.cpu().numpy()])
        for layer in range(1, runner.n_layers + 1):
            with_removal = runner.removed(layer, states, tokens, owner_t, removed_index)  # (R, T, d)
            usual = states[layer][owner_t]                                                # (R, T, d)
            for k, sel in selections.items():
                xs, ys = chunks[layer, k]
                xs.append(usual[sel].float())
                ys.append(with_removal[sel].float())
    pairs = {key: (torch.cat(xs), torch.cat(ys)) for key, (xs, ys) in chunks.items()}
    return pairs, {k: np.concatenate(v) for k, v in influencers.items()}, np.asarray(sentence_of)


def influence_rows(model: Model | OwnStack | PretrainedStack, dump: Dump, cfg: DictConfig,
                   device: torch.device) -> tuple[list[dict], BucketPlan]:
    """The rows of the influence table for one model (ours, or a runner: OwnStack, PretrainedStack),
    and the bucket plan they follow."""
    runner = OwnStack(model) if isinstance(model, Model) else model
    icfg = cfg.analysis.influence
    batch_tokens = setting(cfg, "analysis.influence.batch_tokens")
    measure = check_measure(str(icfg.measure), "analysis.influence.measure")
    affected = resolve_affected(str(icfg.affected), runner.causal)
    chosen, row_bucket, plan = choose_influencers(dump, cfg, affected)
    labels = bucket_labels(bucket_edges(cfg))
    log.info("%s seed %d (affected: %s): %d influencing tokens in %d sentences; pairs %s", dump.objective, dump.seed,
             affected, sum(map(len, chosen.values())), len(chosen), plan.describe())
    pairs, influencers, sentence_of = collect_pairs(runner, dump, chosen, row_bucket, len(labels), affected,
                                                    int(batch_tokens), device)
    boot = bootstrap.plan(cfg, "influence")
    rows = []
    for k in sorted(influencers):
        rng = shuffle_seed(cfg, k)
        take = exact_subset(influencers[k], plan.size, rng)
        perm = rng.permutation(len(take))
        for layer in range(1, runner.n_layers + 1):
            usual, with_removal = pairs[layer, k]
            index = torch.as_tensor(take, device=usual.device)
            cov, shuffled = paired(usual[index], with_removal[index], perm, device=device)
            # intervals over the influencing tokens' sentences (every pair of a sentence drawn together)
            point = distance(measure, cov, cfg)
            reps = replicates([measure], usual[index], with_removal[index], sentence_of[influencers[k][take]], cfg,
                              boot, device)[0][measure]
            rows.append({"measure": measure, "objective": dump.objective, "seed": dump.seed, "layer": layer,
                         "bucket": labels[k], "affected": affected, "distance": point,
                         "shuffled": distance(measure, shuffled, cfg), "n_pairs": len(take),
                         "n_influencers": len(np.unique(influencers[k][take])), **boot.summary(point, reps),
                         "replicates": {"distance": reps}})
    rows.sort(key=lambda r: (r["layer"], labels.index(r["bucket"])))
    return rows, plan


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


def pretrained_runner(cfg: DictConfig, dump: Dump, device: torch.device) -> tuple[PretrainedStack | None, str | None]:
    """The runner of a pretrained model's dump (its weights checked against the dump's), or None and
    the reason the removal cannot be done for its architecture (analysis/measures/hf_influence.py)."""
    from analysis.measures.hf_influence import removal_support
    from pipeline.config import pretrained
    from pipeline.dump.pretrained_probe import encode
    from pipeline.model import hf
    from pipeline.prepare.corpus import read_lines

    spec = pretrained.spec_of(cfg, dump.objective)
    folder = hf.resolve(spec, cfg)
    recorded = dump.meta.get("checkpoint_sha256")
    now = ",".join(w["sha256"] for w in hf.describe(spec, folder, dump.kind, hf.read_config(folder))["weights"])
    if recorded and recorded != now:
        raise PipelineError(f"{folder} holds other weights than {dump.folder} was made from: dump it again")
    model, stack, tokenizer = hf.load(spec, folder, dump.kind, device, torch.float32)
    reason = removal_support(stack)
    if reason is not None:
        return None, reason
    lines = read_lines(Path(str(cfg.paths.data)) / "probe.txt")
    sentences = np.unique(dump.tokens["sentence_id"])
    encoded = encode(tokenizer, [lines[s] for s in sentences])
    inputs = {int(s): (np.asarray(ids, dtype=np.int64), np.flatnonzero(~np.asarray(special, dtype=bool)))
              for s, (ids, special, _) in zip(sentences, encoded)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PretrainedStack(stack, inputs, causal=dump.kind == "lm", pad_id=pad), None


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    dump = load_dump(dump_folder(cfg, str(cfg.label), int(cfg.seed)))
    if dump.meta.get("pretrained"):
        model, reason = pretrained_runner(cfg, dump, device)
        if model is None:
            log.warning("influence not measured for %s: %s", dump.objective, reason)
            out = write_table(part_path(cfg, "influence"), "influence", [], section(cfg, "influence"), started,
                              model=f"{dump.objective}/seed{dump.seed}", not_measured=reason)
            log.info("wrote %s (no rows)", out)
            return
    else:
        model = load_matching_model(cfg, dump, device)
    rows, plan = influence_rows(model, dump, cfg, device)
    out = write_table(part_path(cfg, "influence"), "influence", rows, section(cfg, "influence"), started,
                      model=f"{dump.objective}/seed{dump.seed}", floor=plan.floor, left_out=plan.left_out(),
                      affected=rows[0]["affected"] if rows else None, bootstrap=bootstrap.plan(cfg, "influence").describe())
    log.info("wrote %s (%d rows)", out, len(rows))


main = cli(run)

if __name__ == "__main__":
    main()
