"""The logit lens, measured while a model is dumped: every layer's states read through the model's
own output head, as if the layers above it were not there (nostalgebraist 2020; Belrose et al. 2023
call it the logit lens and fit a "tuned" one).

For each row of a dump that has a target (`targets_of`: an LM's next token, an MLM's original token at
the positions its masked run chose) and each layer l = 0..L, with p_l = softmax(head(norm(h_l))):

- `loss`: -log p_l(target), the cross-entropy of the true token;
- `top1`: 1 when the target is p_l's most likely token;
- `kl`:   KL(p_L || p_l) = sum_v p_L(v) (log p_L(v) - log p_l(v)), how far layer l's reading is from the
          model's own output distribution (0 at layer L).

`norm` is the model's final normalisation (our pre-norm stack's final LayerNorm, GPT-2's ln_f, GPT-NeoX's
final_layer_norm, ..; none for a post-norm stack or BERT); a Hugging Face model returns its last hidden
state already normalised, so layer L goes through the head alone. The lens of layer L must reproduce the
model's logits: that is checked on the first batch of a pretrained model (`Readout.check`), and a head
this module does not recognise, or one that does not reproduce them, leaves the readout unmeasured with
the reason in meta.json rather than a wrong curve.

The rows are computed on the states in the model's dtype before they are stored (`dump.dtype` does not
round them) and written to `readout.npz` (pipeline.dump.format.READOUT_FILE) beside the layers.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.dump.format import READOUT_FILE, partial_path

Lens = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, states (n, d)) -> logits (n, vocab)

# logits of at most this many floats at once (rows x vocabulary): 64 MB
_CHUNK_FLOATS = 1 << 24


class NoReadout(Exception):
    """This model has no output head the lens can read its layers through; the message says why."""


def targets_of(columns: dict, kind: str, masked: bool, eos_id: int | None = None) -> np.ndarray:
    """(n_rows,) the token each row of a dump predicts (-1: none). lm, unmasked: the next row of the same
    sentence (consecutive positions), and after a sentence's last row `eos_id` (our LM is trained to end
    with it; None: no target). mlm, masked run: the original token (label_id) of the rows the masking
    chose (`masked` > 0, the rows the training loss reads). Otherwise no row has one."""
    n = len(columns["sentence_id"])
    out = np.full(n, -1, dtype=np.int64)
    if kind == "lm" and not masked:
        sid, pos = np.asarray(columns["sentence_id"]), np.asarray(columns["position"])
        token = np.asarray(columns["token_id"], dtype=np.int64)
        nxt = np.flatnonzero((sid[:-1] == sid[1:]) & (pos[1:] == pos[:-1] + 1))
        out[nxt] = token[nxt + 1]
        if eos_id is not None:
            last = np.ones(n, dtype=bool)
            last[:-1] = sid[:-1] != sid[1:]
            out[last] = int(eos_id)
    elif kind == "mlm" and masked:
        chosen = np.asarray(columns["masked"]) > 0
        out[chosen] = np.asarray(columns["label_id"], dtype=np.int64)[chosen]
    return out


def our_lens(model) -> Lens:
    """pipeline.model.transformer.Model: the stack's states before its final norm (pre-norm; identity
    for post-norm), through that norm and the output head, at every layer."""
    def lens(layer: int, h: torch.Tensor) -> torch.Tensor:
        return model.head(model.stack.final_norm(h))
    return lens


_NORM_NAMES = ("ln_f", "final_layer_norm", "norm", "final_norm", "final_layernorm")


def hf_lens(model, n_layers: int) -> Lens:
    """A Hugging Face LM or masked LM: its one head module (the model's child beside its base model:
    GPT-2's lm_head, GPT-NeoX's embed_out, BERT's cls with its transform) and its base model's final norm
    (applied below layer L, whose state the model returns normalised). NoReadout when there is no single
    head module."""
    base = model.base_model
    heads = [(name, m) for name, m in model.named_children() if m is not base]
    if len(heads) != 1:
        raise NoReadout(f"{type(model).__name__} has {len(heads)} modules beside its base model "
                        f"({', '.join(n for n, _ in heads) or 'none'}), not one output head")
    head = heads[0][1]
    norm = None
    for holder in (base, getattr(base, "decoder", None)):
        for name in _NORM_NAMES:
            candidate = getattr(holder, name, None) if holder is not None else None
            if isinstance(candidate, torch.nn.Module):
                norm = candidate
                break
        if norm is not None:
            break
    def lens(layer: int, h: torch.Tensor) -> torch.Tensor:
        if norm is not None and layer != n_layers:
            h = norm(h)
        return head(h)
    return lens


class Readout:
    """The lens's rows of one dump set, filled batch by batch (any order), written by `close`."""

    def __init__(self, folder: Path, lens: Lens, targets: np.ndarray, n_layers: int) -> None:
        self.folder, self.lens, self.n_layers = Path(folder), lens, n_layers
        self.tuned: Lens | None = None  # a tuned lens (pipeline.dump.tuned_lens): its rows as tuned_<array>
        self.rows = np.flatnonzero(targets >= 0)
        self.target = targets[self.rows]
        self.slot = np.full(len(targets), -1, dtype=np.int64)
        self.slot[self.rows] = np.arange(len(self.rows))
        shape = (n_layers + 1, len(self.rows))
        self.loss = np.full(shape, np.nan, dtype=np.float32)
        self.kl = np.full(shape, np.nan, dtype=np.float32)
        self.top1 = np.zeros(shape, dtype=np.int8)
        self.tuned_arrays = {"tuned_loss": self.loss.copy(), "tuned_kl": self.kl.copy(), "tuned_top1": self.top1.copy()}
        self.filled = np.zeros(len(self.rows), dtype=bool)
        self.path = self.folder / READOUT_FILE
        self.step: int | None = None

    def add(self, states, batch: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> None:
        """Read `states` (layers 0..L, each (B, T, d)) at (batch[i], positions[i]), the dump's row rows[i]."""
        slots = self.slot[rows]
        keep = slots >= 0
        if not keep.any():
            return
        device = states[0].device
        b, t, slots = torch.as_tensor(batch[keep], device=device), torch.as_tensor(positions[keep], device=device), slots[keep]
        if self.step is None:  # the vocabulary's size sets how many rows' logits are held at once
            vocab = int(self.lens(self.n_layers, states[self.n_layers][b[:1], t[:1]]).shape[-1])
            self.step = max(1, _CHUNK_FLOATS // vocab)
        for start in range(0, len(slots), self.step):
            end = start + self.step
            self._chunk(states, b[start:end], t[start:end], slots[start:end])

    def _chunk(self, states, b: torch.Tensor, t: torch.Tensor, slots: np.ndarray) -> None:
        target = torch.as_tensor(self.target[slots], device=b.device)
        final = F.log_softmax(self.lens(self.n_layers, states[self.n_layers][b, t]).float(), dim=-1)
        p_final = final.exp()
        lenses = [(self.lens, self.loss, self.top1, self.kl)]
        if self.tuned is not None:
            t_ = self.tuned_arrays
            lenses.append((self.tuned, t_["tuned_loss"], t_["tuned_top1"], t_["tuned_kl"]))
        for lens, loss, top1, kls in lenses:
            for layer in range(self.n_layers + 1):
                logp = final if layer == self.n_layers else \
                    F.log_softmax(lens(layer, states[layer][b, t]).float(), dim=-1)
                loss[layer, slots] = (-logp.gather(1, target[:, None])[:, 0]).cpu().numpy()
                top1[layer, slots] = (logp.argmax(-1) == target).to(torch.int8).cpu().numpy()
                kls[layer, slots] = (p_final * (final - logp)).sum(-1).clamp_min(0.0).cpu().numpy()
        self.filled[slots] = True

    def check(self, logits: torch.Tensor, states, batch: np.ndarray, positions: np.ndarray, what: str) -> None:
        """NoReadout unless the lens of layer L gives the model's own `logits` (B, T, V) at the rows
        (batch[i], positions[i]): the known answer that says the head and norm were found right."""
        b = torch.as_tensor(batch, device=logits.device)
        t = torch.as_tensor(positions, device=logits.device)
        mine = self.lens(self.n_layers, states[self.n_layers][b, t]).float()
        theirs = logits[b, t].float()
        scale = max(1.0, float(theirs.abs().max()))
        tolerance = 1e-4 if logits.dtype == torch.float32 else 2e-2  # the model ran in float32, or a half type
        gap = float((mine - theirs).abs().max()) / scale
        if gap > tolerance:
            raise NoReadout(f"the lens of the last layer of {what} does not give the model's own logits "
                            f"(largest difference {gap:.2g} of the logits' scale): its head or final norm is "
                            "not the one this module assumes")

    def close(self) -> tuple[int, str]:
        """Write readout.npz under its partial name; (size, sha256). Every row must have been filled."""
        if not self.filled.all():
            raise RuntimeError(f"{self.path}: {int((~self.filled).sum())} rows with a target were never read")
        buffer = io.BytesIO()
        tuned = self.tuned_arrays if self.tuned is not None else {}
        np.savez(buffer, rows=self.rows, target=self.target, loss=self.loss, top1=self.top1, kl=self.kl, **tuned)
        data = buffer.getvalue()
        partial_path(self.path).write_bytes(data)
        return len(data), hashlib.sha256(data).hexdigest()


TARGETS = {"lm": "the next token (after a sentence's last: eos where the model was trained to end with it)",
           "mlm": "the original token at the positions the masking chose (masked/)"}


def sentence_subset(sentence_ids: np.ndarray, n: int | None) -> np.ndarray:
    """(rows,) bool: the rows of `n` of the sentences (None: all), those whose ids hash lowest (a seeded
    hash of the id alone, so that models that keep the same sentences read the same ones)."""
    ids = np.asarray(sentence_ids)
    if n is None:
        return np.ones(len(ids), dtype=bool)
    unique = np.unique(ids)
    with np.errstate(over="ignore"):
        hashed = (unique.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    chosen = unique[np.argsort(hashed, kind="stable")[:n]]
    return np.isin(ids, chosen)


def attach(sets, kind: str, make_lens: Callable[[], Lens], n_layers: int, enabled: bool,
           eos_id: int | None = None, sentences: int | None = None) -> None:
    """Give each set of a dump (its `columns`, `meta`, `folder`) a Readout when its rows have targets (those
    of `sentences` probe sentences, `sentence_subset`; None: all), and say in every set's meta.json what
    the readout holds, or why there is none (`make_lens` may raise NoReadout)."""
    why = None
    if not enabled:
        why = "dump.readout is false"
    elif kind == "mt":
        why = "an MT encoder has no output head of its own (the decoder's reads the target side)"
    elif kind not in TARGETS:
        why = f"a model of kind {kind} has no trained output head"
    lens = None
    if why is None:
        try:
            lens = make_lens()
        except NoReadout as e:
            why = str(e)
    for dset in sets:
        targets = None if lens is None else targets_of(dset.columns, kind, bool(dset.meta["masked"]), eos_id)
        if targets is not None:
            targets[~sentence_subset(dset.columns["sentence_id"], sentences)] = -1
        if targets is not None and (targets >= 0).any():
            dset.readout = Readout(dset.folder, lens, targets, n_layers)
            dset.meta["readout"] = {"measured": True, "targets": TARGETS[kind], "rows": len(dset.readout.rows)}
        else:
            dset.meta["readout"] = {"measured": False,
                                    "why": why or ("in masked/" if kind == "mlm" else "no row has a target")}


def not_measured(dset, why: str) -> None:
    """Take a set's readout back (a check failed): its meta says why, and no readout.npz is written."""
    dset.readout = None
    dset.meta["readout"] = {"measured": False, "why": why}


def add_sentences(readout: Readout | None, states, idx: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                  first: int = 1) -> None:
    """Feed a batch of our stack to `readout` (nothing when there is none): sentence idx[r] at batch row
    r, its n tokens at positions first .. first + n - 1 (after bos), dump rows offsets[idx[r]] ..."""
    if readout is None:
        return
    n = lengths[idx]
    within = np.concatenate([np.arange(k) for k in n])
    readout.add(states, np.repeat(np.arange(len(idx)), n), within + first, np.repeat(offsets[idx], n) + within)
