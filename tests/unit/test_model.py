"""The shared stack: causal masking, identical initialisation across objectives, layer states."""
import pytest
import torch

from pipeline.model.transformer import ModelArgs, attention_mask, build_model, load_model

ARGS = ModelArgs(d_vocab=50, pad_id=0, n_layers=3, n_dec_layers=2, d_model=32, n_heads=4, d_mlp=64,
                 dropout=0.0, n_ctx=40)


def tokens(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, ARGS.d_vocab, (B, T), generator=g)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_causal_mask_does_not_leak(norm):
    """Changing later tokens leaves every layer's states of earlier LM positions unchanged."""
    model = build_model("lm", ModelArgs(**{**ARGS.__dict__, "norm": norm}), seed=1).eval()
    x = tokens()
    y = x.clone()
    y[:, 7:] = torch.randint(5, ARGS.d_vocab, y[:, 7:].shape)
    with torch.no_grad():
        _, sx = model.encode(x, return_states=True)
        _, sy = model.encode(y, return_states=True)
    for layer, (a, b) in enumerate(zip(sx, sy)):
        assert torch.equal(a[:, :7], b[:, :7]), f"layer {layer} leaks from the future"
        if layer > 0:  # and the later positions do see their own, changed, input
            assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_bidirectional_stacks_see_the_future():
    for kind in ("mlm", "mt"):
        model = build_model(kind, ARGS, seed=1).eval()
        x = tokens()
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1 - 5) % (ARGS.d_vocab - 5) + 5
        with torch.no_grad():
            a, b = model.encode(x)[0], model.encode(y)[0]
        assert not torch.allclose(a[:, 0], b[:, 0])


def test_padding_is_never_attended():
    model = build_model("mlm", ARGS, seed=3).eval()
    x = tokens(B=1, T=6)
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, b = model.encode(x)[0], model.encode(padded)[0]
    torch.testing.assert_close(a, b[:, :6], rtol=1e-5, atol=1e-5)


def test_identical_initialisation_across_objectives():
    """For a given seed the analysed stack starts from the same weights whatever the objective."""
    stacks = {k: build_model(k, ARGS, seed=7).stack.state_dict() for k in ("mt", "lm", "mlm")}
    for kind in ("lm", "mlm"):
        assert stacks[kind].keys() == stacks["mt"].keys()
        for name, w in stacks["mt"].items():
            assert torch.equal(w, stacks[kind][name]), f"{kind}: {name} differs from mt"
    other = build_model("mt", ARGS, seed=8).stack.state_dict()
    assert not torch.equal(other["blocks.0.attn.q.weight"], stacks["mt"]["blocks.0.attn.q.weight"])


def test_states_of_every_layer():
    model = build_model("mlm", ARGS, seed=1).eval()
    x = tokens()
    with torch.no_grad():
        out, states = model.encode(x, return_states=True)
    assert len(states) == ARGS.n_layers + 1
    assert all(s.shape == (3, 12, ARGS.d_model) for s in states)
    torch.testing.assert_close(out, states[-1])  # post-norm: the last block's output is the output
    emb = model.stack.embed
    torch.testing.assert_close(states[0], emb.tok(x) * emb.scale + emb.pos[:12])


def test_attention_mask_shape_and_content():
    t = torch.tensor([[2, 5, 6, 0]])
    m = attention_mask(t, pad_id=0, causal=True)
    assert m.shape == (1, 1, 4, 4)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(m[0, 0], expected)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("mt", ARGS, seed=2).eval()
    torch.save({"model": model.checkpoint_args(), "state_dict": model.state_dict()}, tmp_path / "m.pt")
    again, _ = load_model(tmp_path / "m.pt")
    x = tokens()
    tgt = tokens(T=5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, tgt), again(x, tgt))


def test_invalid_args_name_the_setting():
    with pytest.raises(ValueError, match="model.n_heads"):
        ModelArgs(d_vocab=10, pad_id=0, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="model.norm"):
        ModelArgs(d_vocab=10, pad_id=0, norm="sandwich")


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_attention_equals_torch_sdpa(causal):
    """The CPU bf16 attention path computes what scaled_dot_product_attention computes."""
    import torch.nn.functional as F

    from pipeline.model.transformer import attention_mask, explicit_attention

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 50, (4, 9), generator=g)
    tokens[1, 6:] = 0  # padding
    mask = attention_mask(tokens, 0, causal)
    q, k, v = (torch.randn(4, 2, 9, 8, generator=g) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(explicit_attention(q, k, v, mask, 0.0), want, atol=1e-5)
    got16 = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, 0.0).float()
    assert torch.allclose(got16, want, atol=3e-2)
