"""Influence for Hugging Face stacks (analysis.measures.hf_influence): one key hidden at one block of tiny
random-weight BERT, GPT-2 and Marian (plus BART, T5 and GPT-NeoX encoders/bases), against known
answers (at block 1 the removal is the full model with the token masked out), against block n run
by hand with an explicitly built mask, one row at a time, and eager against sdpa attention."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from analysis.measures.hf_influence import (block_is_causal, removal_support, removed_hidden_states,  # noqa: E402
                                   stack_blocks)

VOCAB, T, LAYERS = 50, 7, 3
LENGTHS = (7, 5, 3)                      # three sentences, right-padded to T with id 0
IMPLS = ("eager", "sdpa")
MAIN = ("bert", "gpt2", "marian")
EXTRA = ("bart", "t5", "neox")
CAUSAL = {"gpt2", "neox"}


def build(arch: str, impl: str):
    """The analysed stack of a tiny model (random weights, seed 0, eval mode) with the given attention."""
    torch.manual_seed(0)
    t = transformers
    small = dict(vocab_size=VOCAB, pad_token_id=0, decoder_start_token_id=0, attn_implementation=impl)
    if arch == "bert":
        model = t.BertForMaskedLM(t.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS,
                                               num_attention_heads=2, intermediate_size=64, attn_implementation=impl))
        stack = model.base_model
    elif arch == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=2, vocab_size=VOCAB, bos_token_id=1,
                                               eos_token_id=2, attn_implementation=impl))
        stack = model.transformer
    elif arch == "marian":
        model = t.MarianMTModel(t.MarianConfig(d_model=32, encoder_layers=LAYERS, decoder_layers=1,
                                               encoder_attention_heads=2, decoder_attention_heads=2,
                                               encoder_ffn_dim=64, decoder_ffn_dim=64, **small))
        stack = model.get_encoder()
    elif arch == "bart":
        model = t.BartForConditionalGeneration(t.BartConfig(d_model=32, encoder_layers=LAYERS, decoder_layers=1,
                                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                                            encoder_ffn_dim=64, decoder_ffn_dim=64, **small))
        stack = model.get_encoder()
    elif arch == "t5":
        model = t.T5ForConditionalGeneration(t.T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=LAYERS,
                                                        num_decoder_layers=1, num_heads=2, **small))
        stack = model.get_encoder()
    elif arch == "neox":
        model = t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     attn_implementation=impl))
        stack = model.base_model
    else:
        raise ValueError(arch)
    model.eval()
    assert stack.config._attn_implementation == impl
    return stack


_STACKS: dict = {}


def stack_of(arch: str, impl: str = "sdpa"):
    """Built once per test session; eager and sdpa copies share the same weights."""
    if (arch, impl) not in _STACKS:
        stack = build(arch, impl)
        if impl != "eager":
            stack.load_state_dict(stack_of(arch, "eager").state_dict())
        _STACKS[arch, impl] = stack
    return _STACKS[arch, impl]


def sentences(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) (3, T): LENGTHS tokens each, right padding (id 0, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(LENGTHS), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return ids * mask, mask


def every_removal() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per (sentence, real token j): ids, mask (R, T) and removed (R,)."""
    ids, mask = sentences()
    owner = torch.tensor([s for s, n in enumerate(LENGTHS) for _ in range(n)])
    removed = torch.tensor([j for n in LENGTHS for j in range(n)])
    return ids[owner], mask[owner], removed


@torch.no_grad()
def hidden(stack, ids, mask) -> tuple[torch.Tensor, ...]:
    """The plain hidden states (index 0 = embeddings, n = block n) of a stack."""
    return stack(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


def later(arch: str, r: int, j: int, mask: torch.Tensor) -> list[int]:
    """The positions a removal of j may change in row r: every other real token (bidirectional) or
    the real tokens after j (causal)."""
    real = [i for i in range(T) if mask[r, i]]
    return [i for i in real if (i > j if arch in CAUSAL else i != j)]


# ---------------------------------------------------------------- block 1: a known answer

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", MAIN + EXTRA)
def test_layer1_equals_masking_the_token_out(arch, impl):
    """At block 1 hiding key j from every other query is the full model run with attention_mask[j] = 0
    at hidden_states[1], at every real position but j; with a causal model, the positions before j
    (and j itself, everywhere) are the unremoved states."""
    stack = stack_of(arch, impl)
    ids, mask, removed = every_removal()
    got = removed_hidden_states(stack, ids, mask, 1, removed)
    masked = mask.clone()
    masked[torch.arange(len(removed)), removed] = 0
    expected = hidden(stack, ids, masked)[1]
    plain = hidden(stack, ids, mask)[1]
    assert got.shape == plain.shape
    for r, j in enumerate(removed.tolist()):
        affected = later(arch, r, j, mask)
        torch.testing.assert_close(got[r, affected], expected[r, affected], atol=1e-5, rtol=1e-5)
        keep = list(range(j + 1)) if arch in CAUSAL else [j]   # j itself, and (causal) the tokens before it
        torch.testing.assert_close(got[r, keep], plain[r, keep], atol=1e-6, rtol=1e-6)
        if affected:
            assert (got[r, affected] - plain[r, affected]).abs().max() > 1e-4  # the removal did something


# ---------------------------------------------------------------- deeper blocks

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", MAIN + EXTRA)
def test_deeper_layers_change_the_others_and_padding_changes_nothing(arch, impl):
    """Blocks 2..L: the removal changes other real tokens, never j itself nor (causal) the tokens
    before j; removing a padding position gives exactly the plain hidden_states[n], the last layer
    included (where the stack's final norm applies, e.g. GPT-2's ln_f)."""
    stack = stack_of(arch, impl)
    ids, mask, removed = every_removal()
    plain = hidden(stack, ids, mask)
    for n in range(2, LAYERS + 1):
        got = removed_hidden_states(stack, ids, mask, n, removed)
        for r, j in enumerate(removed.tolist()):
            keep = list(range(j + 1)) if arch in CAUSAL else [j]
            torch.testing.assert_close(got[r, keep], plain[n][r, keep], atol=1e-6, rtol=1e-6)
            affected = later(arch, r, j, mask)
            if affected:
                assert (got[r, affected] - plain[n][r, affected]).abs().max() > 1e-4
    pid, pmask = sentences()
    padded = [s for s, n in enumerate(LENGTHS) if n < T]
    pid, pmask = pid[padded], pmask[padded]
    pad_removed = torch.tensor([T - 1] * len(padded))
    for n in range(1, LAYERS + 1):
        got = removed_hidden_states(stack, pid, pmask, n, pad_removed)
        real = pmask.bool()
        torch.testing.assert_close(got[real], hidden(stack, pid, pmask)[n][real], atol=1e-6, rtol=1e-6)


def by_hand(arch: str, stack, ids, mask, removed, n) -> torch.Tensor:
    """The definition computed independently: hidden_states[n-1] from a plain forward, then block n
    called directly with an additive mask built element by element (padding keys masked, causal for
    GPT-2, key j hidden from every query but j), then the final norm where n is the last layer."""
    prev = hidden(stack, ids, mask)[n - 1]
    R = ids.shape[0]
    big = torch.finfo(prev.dtype).min
    m = torch.zeros(R, 1, T, T)
    for r in range(R):
        j = int(removed[r])
        for q in range(T):
            for k in range(T):
                visible = bool(mask[r, k]) and (k <= q or arch not in CAUSAL) and not (k == j and q != j)
                m[r, 0, q, k] = 0.0 if visible else big
    with torch.no_grad():
        out = stack_blocks(stack)[n - 1](prev, attention_mask=m)
        out = out[0] if isinstance(out, tuple) else out
        if n == LAYERS and arch == "gpt2":
            out = stack.ln_f(out)
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", MAIN)
def test_matches_block_run_by_hand(arch, impl):
    """Layers 2 and 3 against block n run by hand on the plain layer n-1 states."""
    stack = stack_of(arch, impl)
    ids, mask, removed = every_removal()
    for n in (2, 3):
        got = removed_hidden_states(stack, ids, mask, n, removed)
        want = by_hand(arch, stack, ids, mask, removed, n)
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- batching, padding, implementations

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", MAIN)
def test_batch_equals_rows_one_at_a_time(arch, impl):
    """Rows with different sentences, padding and removed positions (one of them a padding position)
    give, at every layer, what each row gives alone, and alone without its padding (an unpadded row
    is where the model passes no mask at all under sdpa, so the hook builds one)."""
    stack = stack_of(arch, impl)
    ids, mask = sentences()
    owner = torch.tensor([0, 1, 2, 0, 1, 2])
    removed = torch.tensor([2, 0, 5, 6, 4, 1])
    for n in range(1, LAYERS + 1):
        batch = removed_hidden_states(stack, ids[owner], mask[owner], n, removed)
        for r in range(len(owner)):
            s, length = int(owner[r]), LENGTHS[int(owner[r])]
            alone = removed_hidden_states(stack, ids[s:s + 1], mask[s:s + 1], n, removed[r:r + 1])
            torch.testing.assert_close(batch[r, :length], alone[0, :length], atol=1e-5, rtol=1e-5)
            if int(removed[r]) < length:
                trimmed = removed_hidden_states(stack, ids[s:s + 1, :length], None, n, removed[r:r + 1])
                torch.testing.assert_close(batch[r, :length], trimmed[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", MAIN + EXTRA)
def test_eager_equals_sdpa(arch):
    """The same weights under eager and sdpa attention give the same removed states at every layer."""
    ids, mask, removed = every_removal()
    real = mask.bool()
    for n in range(1, LAYERS + 1):
        eager = removed_hidden_states(stack_of(arch, "eager"), ids, mask, n, removed)
        sdpa = removed_hidden_states(stack_of(arch, "sdpa"), ids, mask, n, removed)
        torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(eager).all() and torch.isfinite(sdpa).all()


@pytest.mark.parametrize("arch", MAIN)
def test_padding_stays_masked(arch):
    """Other token ids at the padding positions change nothing at the real positions."""
    stack = stack_of(arch, "sdpa")
    ids, mask, removed = every_removal()
    other = torch.randint(1, VOCAB, ids.shape, generator=torch.Generator().manual_seed(3))
    noisy = torch.where(mask.bool(), ids, other)
    real = mask.bool()
    for n in (1, LAYERS):
        a = removed_hidden_states(stack, ids, mask, n, removed)
        b = removed_hidden_states(stack, noisy, mask, n, removed)
        torch.testing.assert_close(a[real], b[real], atol=1e-6, rtol=1e-6)


def test_hooks_are_removed_and_inputs_checked():
    """The hooks go away after a run (also one that stops early), and bad inputs are refused."""
    stack = stack_of("gpt2")
    ids, mask, removed = every_removal()
    counts = [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in stack_blocks(stack)]
    removed_hidden_states(stack, ids, mask, 1, removed)
    removed_hidden_states(stack, ids, mask, LAYERS, removed)
    assert [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in stack_blocks(stack)] == counts
    for layer in (0, LAYERS + 1):
        with pytest.raises(ValueError, match="layer"):
            removed_hidden_states(stack, ids, mask, layer, removed)
    with pytest.raises(ValueError, match="removed"):
        removed_hidden_states(stack, ids, mask, 1, removed[:-1])
    with pytest.raises(ValueError, match="0..6"):
        removed_hidden_states(stack, ids, mask, 1, torch.full_like(removed, T))
    stack.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            removed_hidden_states(stack, ids, mask, 1, removed)
    finally:
        stack.eval()


# ---------------------------------------------------------------- which stacks are supported

@pytest.mark.parametrize("arch", MAIN + EXTRA)
def test_supported_stacks(arch):
    """The blocks are found (one per layer, the modules whose outputs are the hidden states),
    causality is read right, and removal_support says None."""
    stack = stack_of(arch, "sdpa")
    blocks = stack_blocks(stack)
    assert len(blocks) == LAYERS
    assert block_is_causal(blocks[0], stack.config) == (arch in CAUSAL)
    assert removal_support(stack) is None
    assert not stack.training


class _IgnoresMask(torch.nn.Module):
    """A block that takes an attention mask and never reads it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, hidden_states, attention_mask=None):
        return self.proj(hidden_states)


class _NoMaskArgument(_IgnoresMask):
    def forward(self, hidden_states):
        return self.proj(hidden_states)


class _Stack(torch.nn.Module):
    """A minimal stack with a `layers` list of blocks."""

    def __init__(self, block):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.layers = torch.nn.ModuleList([block(), block()])

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        n = input_ids.shape[1]
        attention_mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, n, n)
        for layer in self.layers:
            x = layer(x, attention_mask=attention_mask) if type(layer) is _IgnoresMask else layer(x)
        return (x,)


def test_unsupported_stacks_get_a_reason():
    """A reason (a non-empty line) for a module without blocks, blocks without an attention_mask
    argument, blocks that ignore the mask, and an attention implementation without a 4D mask."""
    reasons = [removal_support(torch.nn.Linear(4, 4)), removal_support(_Stack(_NoMaskArgument)),
               removal_support(_Stack(_IgnoresMask))]
    flex = copy.deepcopy(stack_of("bert", "sdpa"))
    flex.config._attn_implementation = "flex_attention"
    reasons.append(removal_support(flex))
    for reason, words in zip(reasons, ("no list of transformer blocks", "take no attention_mask",
                                       "changes nothing", "flex_attention")):
        assert isinstance(reason, str) and words in reason and "\n" not in reason
