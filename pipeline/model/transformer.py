"""The Transformer shared by every objective.

One `Stack` (token embedding + sinusoidal positions + `n_layers` blocks) is the analysed model of
every objective: the MT encoder, the causal LM, the bidirectional MLM. `build_model` creates that
stack first under `torch.manual_seed(seed)`, so for a given seed the analysed stack starts from the
same weights whatever the objective (Voita et al. 2019, §2: only the objective differs). What an
objective adds (MT decoder, output bias) is created afterwards from a derived seed.

Vocabulary of dimensions (as TransformerLens): d_model, n_layers, n_heads, d_mlp, n_ctx, d_vocab.
Layer 0 is embedding + positions; layer l >= 1 is the output of block l (`blocks.{l-1}` resid_post).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import PipelineError

KINDS = ("mt", "lm", "mlm")


@dataclass(frozen=True)
class ModelArgs:
    d_vocab: int
    pad_id: int
    n_layers: int = 6
    n_dec_layers: int = 3
    d_model: int = 256
    n_heads: int = 4
    d_mlp: int = 1024
    dropout: float = 0.1
    norm: str = "post"  # post | pre
    n_ctx: int = 128
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm={self.norm!r}: expected 'pre' or 'post'")


def sinusoids(n_ctx: int, d_model: int) -> Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017), shape (n_ctx, d_model)."""
    pos = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_ctx, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table.float()


def attention_mask(tokens: Tensor, pad_id: int, causal: bool) -> Tensor:
    """Boolean mask for scaled_dot_product_attention, True = may attend. Shape (B, 1, T, T).

    Padding is never a key; with `causal` a token sees itself and the past only. Every query keeps
    at least one key (position 0 is never padding), so no softmax row is empty.
    """
    B, T = tokens.shape
    keys = (tokens != pad_id)[:, None, None, :]  # (B, 1, 1, T)
    mask = keys.expand(B, 1, T, T)
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
    return mask


class Attention(nn.Module):
    """Multi-head attention on torch's scaled_dot_product_attention (self- or cross-)."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.dropout = a.n_heads, a.dropout
        self.q = nn.Linear(a.d_model, a.d_model)
        self.kv = nn.Linear(a.d_model, 2 * a.d_model)
        self.out = nn.Linear(a.d_model, a.d_model)

    def forward(self, x: Tensor, mask: Tensor, memory: Tensor | None = None) -> Tensor:
        B, T, C = x.shape  # (B, T, d_model)
        src = x if memory is None else memory  # (B, S, d_model)
        q = self.q(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, d_head)
        k, v = self.kv(src).view(B, src.shape[1], 2, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, S, d_head)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = explicit_attention(q, k, v, mask, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float) -> Tensor:
    """softmax(q k^T / sqrt(d_head) where mask) v, written out: matmuls in the inputs' dtype, the
    softmax in float32. On the CPU in bf16 this is what autocast training should run: torch's
    flash-attention CPU kernel took 414 ms for forward + backward of (256, 4, 16, 32) bf16 heads,
    this 37 ms (fp32 flash: 51 ms; one thread, measured on the development machine)."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if dropout > 0:
        weights = F.dropout(weights, dropout)
    return weights @ v


class MLP(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(a.d_model, a.d_mlp), nn.Linear(a.d_mlp, a.d_model)
        self.drop = nn.Dropout(a.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.drop(F.relu(self.up(x))))


class Block(nn.Module):
    """Self-attention (+ cross-attention in the decoder) + MLP, each a residual sublayer.

    post-norm (Transformer-base): x = LN(x + f(x)); pre-norm: x = x + f(LN(x)).
    """

    def __init__(self, a: ModelArgs, cross: bool = False) -> None:
        super().__init__()
        self.pre = a.norm == "pre"
        self.attn, self.mlp = Attention(a), MLP(a)
        self.cross = Attention(a) if cross else None
        n_sub = 3 if cross else 2
        self.norms = nn.ModuleList(nn.LayerNorm(a.d_model) for _ in range(n_sub))
        self.drop = nn.Dropout(a.dropout)

    def _sub(self, i: int, x: Tensor, f) -> Tensor:
        if self.pre:
            return x + self.drop(f(self.norms[i](x)))
        return self.norms[i](x + self.drop(f(x)))

    def forward(self, x: Tensor, mask: Tensor, memory: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        x = self._sub(0, x, lambda h: self.attn(h, mask))
        if self.cross is not None:
            x = self._sub(2, x, lambda h: self.cross(h, memory_mask, memory))
        return self._sub(1, x, self.mlp)


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(d_model) + fixed sinusoidal positions: layer 0."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.scale = math.sqrt(a.d_model)
        self.tok = nn.Embedding(a.d_vocab, a.d_model, padding_idx=a.pad_id)
        nn.init.normal_(self.tok.weight, std=a.d_model ** -0.5)
        with torch.no_grad():
            self.tok.weight[a.pad_id].zero_()
        self.register_buffer("pos", sinusoids(a.n_ctx, a.d_model), persistent=False)
        self.drop = nn.Dropout(a.dropout)
        self.n_ctx = a.n_ctx

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        if T > self.n_ctx:
            raise ValueError(f"input of {T} tokens is longer than model.n_ctx={self.n_ctx}")
        return self.drop(self.tok(tokens) * self.scale + self.pos[:T])  # (B, T, d_model)


class Stack(nn.Module):
    """The analysed stack: embedding + n_layers blocks (+ a final LayerNorm when pre-norm)."""

    def __init__(self, a: ModelArgs, causal: bool) -> None:
        super().__init__()
        self.args, self.causal = a, causal
        self.embed = Embedding(a)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.final_norm = nn.LayerNorm(a.d_model) if a.norm == "pre" else nn.Identity()

    def mask(self, tokens: Tensor) -> Tensor:
        return attention_mask(tokens, self.args.pad_id, self.causal)

    def forward(self, tokens: Tensor, return_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, T) -> (output (B, T, d_model), states [layer 0..L] each (B, T, d_model) or [])."""
        mask = self.mask(tokens)
        x = self.embed(tokens)
        states = [x] if return_states else []
        for block in self.blocks:
            x = block(x, mask)
            if return_states:
                states.append(x)
        return self.final_norm(x), states


class OutputHead(nn.Module):
    """Projection to the vocabulary; tied to the token embedding unless model.tie_embeddings=false."""

    def __init__(self, a: ModelArgs, embedding: nn.Embedding) -> None:
        super().__init__()
        self.tied = a.tie_embeddings
        self.embedding = [embedding]  # a list keeps it out of this module's parameters
        self.proj = None if a.tie_embeddings else nn.Linear(a.d_model, a.d_vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(a.d_vocab))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.embedding[0].weight if self.tied else self.proj.weight
        return F.linear(x, weight, self.bias)  # (B, T, d_vocab)


class Model(nn.Module):
    """A stack + what its objective needs. kind: mt (encoder-decoder), lm (causal), mlm."""

    def __init__(self, kind: str, a: ModelArgs, seed: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"objective.kind={kind!r}: expected one of {KINDS}")
        self.kind, self.args = kind, a
        torch.manual_seed(seed)  # the shared stack: identical for every objective with this seed
        self.stack = Stack(a, causal=kind == "lm")
        torch.manual_seed(seed + 104729)  # objective-specific parts
        if kind == "mt":
            self.decoder = nn.ModuleList(Block(a, cross=True) for _ in range(a.n_dec_layers))
            self.dec_norm = nn.LayerNorm(a.d_model) if a.norm == "pre" else nn.Identity()
        self.head = OutputHead(a, self.stack.embed.tok)

    def encode(self, tokens: Tensor, return_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """The analysed stack: tokens (B, T) -> (output, states of layers 0..L)."""
        return self.stack(tokens, return_states)

    def decode(self, memory: Tensor, src: Tensor, tgt_in: Tensor) -> Tensor:
        """MT decoder: memory (B, S, d), src (B, S), tgt_in (B, T) -> logits (B, T, d_vocab)."""
        pad = self.args.pad_id
        memory_mask = (src != pad)[:, None, None, :]  # (B, 1, 1, S)
        mask = attention_mask(tgt_in, pad, causal=True)
        x = self.stack.embed(tgt_in)
        for block in self.decoder:
            x = block(x, mask, memory, memory_mask)
        return self.head(self.dec_norm(x))

    def forward(self, tokens: Tensor, tgt_in: Tensor | None = None) -> Tensor:
        """Logits: for mt over the target (given tgt_in), else over the input positions."""
        out, _ = self.encode(tokens)
        if self.kind == "mt":
            if tgt_in is None:
                raise ValueError("an MT model needs tgt_in")
            return self.decode(out, tokens, tgt_in)
        return self.head(out)

    def checkpoint_args(self) -> dict:
        return {"kind": self.kind, "args": asdict(self.args)}


def build_model(kind: str, args: ModelArgs, seed: int) -> Model:
    return Model(kind, args, seed)


class UnsafeCheckpoint(PipelineError):
    """A checkpoint that holds pickled objects (code to run on loading), not plain data."""


def read_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint as plain data: tensors, numbers, strings, lists and dicts, loaded with
    `weights_only=True`, so that a file planted in a results folder never runs code. A file that
    holds anything else is refused (`UnsafeCheckpoint`), one that is no checkpoint at all is a
    PipelineError; both name the file."""
    import pickle

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        why = next((line.split("WeightsUnpickler error:", 1)[1].split(". Please")[0].strip()
                    for line in str(error).splitlines() if "WeightsUnpickler error:" in line), "")
        if why.startswith("Unsupported global"):
            raise UnsafeCheckpoint(f"{path} holds pickled objects, not only tensors, numbers, strings, lists and "
                                   f"dicts ({why}): it is not loaded, as loading would run its code; delete it "
                                   "if you did not put it there") from None
        raise PipelineError(f"{path} is not a readable checkpoint ({why or type(error).__name__})") from None
    if not isinstance(ckpt, dict):
        raise PipelineError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint (a dict)")
    return ckpt


def load_model(path, map_location="cpu") -> tuple[Model, dict]:
    """Rebuild a model from a checkpoint alone (its args + weights); returns (model in eval mode, checkpoint)."""
    ckpt = read_checkpoint(path, map_location)
    info = ckpt["model"]
    model = Model(info["kind"], ModelArgs(**info["args"]), seed=0)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
