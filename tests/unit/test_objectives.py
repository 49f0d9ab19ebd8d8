"""Masking proportions, token dropout and token-count batching."""
import numpy as np
import torch

from pipeline.model.objectives import IGNORE, Specials, make_batches, mask_tokens, token_dropout

SP = Specials(pad=0, bos=2, eos=3, mask=4, n_special=5, d_vocab=1000)


def sentences(B=400, T=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, SP.d_vocab, (B, T), generator=g)
    x[:, 0], x[:, -1] = SP.bos, SP.eos
    x[: B // 2, T - 8:] = SP.pad  # some padding
    return x


def test_mlm_masking_proportions_over_many_draws():
    gen = torch.Generator().manual_seed(1)
    chosen = masked = randomised = kept = ordinary = 0
    for _ in range(20):
        x = sentences()
        inputs, labels, kind = mask_tokens(x, SP, gen)
        special = x < SP.n_special
        assert torch.equal(inputs[special], x[special]), "special tokens must never be masked"
        assert (labels[special] == IGNORE).all()
        sel = labels != IGNORE
        assert torch.equal(labels[sel], x[sel])
        assert (inputs[kind == 1] == SP.mask).all()
        assert torch.equal(inputs[kind == 3], x[kind == 3])
        assert (inputs[kind == 2] >= SP.n_special).all()
        ordinary += int((~special).sum())
        chosen += int(sel.sum())
        masked += int((kind == 1).sum())
        randomised += int((kind == 2).sum())
        kept += int((kind == 3).sum())
    # ~200k ordinary tokens: binomial standard errors are below 0.1 percentage points
    assert abs(chosen / ordinary - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.01
    assert abs(randomised / chosen - 0.1) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01


def test_token_dropout_rate_and_specials():
    gen = torch.Generator().manual_seed(2)
    x = sentences()
    y = token_dropout(x, 0.1, SP, gen)
    special = x < SP.n_special
    assert torch.equal(y[special], x[special])
    changed = (y != x)[~special].float().mean().item()
    assert abs(changed - 0.1 * (1 - 1 / (SP.d_vocab - SP.n_special))) < 0.01
    assert torch.equal(token_dropout(x, 0.0, SP, gen), x)


def test_batches_cover_every_example_once_within_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=5000)
    batches = make_batches(lengths, max_tokens=1000, seed=3, epoch=0)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(5000))
    for b in batches:
        assert len(b) == 1 or lengths[b].max() * len(b) <= 1000
    again = make_batches(lengths, max_tokens=1000, seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = make_batches(lengths, max_tokens=1000, seed=3, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
