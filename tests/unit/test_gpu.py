"""The CUDA paths against the CPU: training with bf16 autocast on the GPU, the dump, and the tensor
code of the analyses (k-means, exact neighbours, the influence pass). Skipped without CUDA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.measures.influence import removed_states
from analysis.stats.kmeans import kmeans
from analysis.measures.mutual_info import mi_of_clusters
from analysis.measures.neighbours import nearest_neighbours
from pipeline.prepare.corpus import prepare_data
from pipeline.dump.stage import dump
from pipeline.dump.format import read_tokens
from pipeline.model.transformer import ModelArgs, build_model, load_model
from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
from pipeline.train.stage import train
from tests.synthetic import FAST_TRAINING, read_log, save_untrained

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("objective", ["mt", "mlm"])
def test_training_on_cuda_with_bf16_autocast_learns_and_loads_on_the_cpu(objective, smoke_cfg, tmp_path):
    cfg = smoke_cfg(f"objective={objective}", "train.device=cuda", "train.precision=auto", *FAST_TRAINING)
    summary = train(cfg)
    assert summary["device"].startswith("cuda") and summary["precision"] == "torch.bfloat16"
    model_dir = tmp_path / "models" / objective / "seed1"
    log = read_log(model_dir)
    assert log[-1]["dev_loss"] < log[0]["dev_loss"] < math.log(cfg.data.tokenizer.vocab_size)
    model, _ = load_model(model_dir / "model.pt")  # a GPU-trained checkpoint rebuilds on the CPU
    assert next(model.parameters()).device.type == "cpu"


def test_dump_on_cuda_equals_the_dump_on_the_cpu(smoke_cfg, tmp_path):
    def cfg_on(device):
        return smoke_cfg("objective=mlm", f"dump.device={device}", "dump.dtype=float32",
                         f"paths.dump={tmp_path}/dumps_{device}")

    cfg = cfg_on("cpu")
    prepare_data(cfg)
    train_tokenizer(cfg)
    save_untrained(cfg, Tokenizer.load(cfg.paths.tokenizer))
    cpu, gpu = dump(cfg), dump(cfg_on("cuda"))
    for sub in ("", "masked"):
        want, got = read_tokens(cpu / sub), read_tokens(gpu / sub)
        assert want.keys() == got.keys() and all(np.array_equal(want[c], got[c]) for c in want)
        for a, b in zip(sorted((cpu / sub).glob("layer_*.npy")), sorted((gpu / sub).glob("layer_*.npy"))):
            np.testing.assert_allclose(np.load(b), np.load(a), rtol=1e-3, atol=1e-3, err_msg=f"{sub} {a.name}")


def test_kmeans_on_cuda_finds_the_partition_the_cpu_finds():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8, size=(20, 16))
    blob = rng.integers(0, 20, 4000)
    states = (centres[blob] + rng.normal(size=(4000, 16))).astype(np.float32)
    cpu = kmeans(states, 20, seed=1, iters=20)
    gpu = kmeans(states, 20, seed=1, iters=20, device=torch.device("cuda"))
    assert mi_of_clusters(gpu.labels, blob, 0).mi == pytest.approx(mi_of_clusters(cpu.labels, blob, 0).mi, abs=1e-9)
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_neighbours_on_cuda_equal_the_cpu(metric):
    x = np.random.default_rng(1).normal(size=(3000, 32)).astype(np.float32)
    queries = np.arange(0, 3000, 7)
    cpu = nearest_neighbours(x, queries, 10, metric)
    gpu = nearest_neighbours(x, queries, 10, metric, device="cuda")
    assert (cpu == gpu).mean() > 0.999  # exact search: only float ties may order differently


@pytest.mark.parametrize("kind", ["lm", "mlm"])
def test_influence_pass_on_cuda_equals_the_cpu(kind):
    args = ModelArgs(d_vocab=60, pad_id=0, n_layers=3, n_dec_layers=1, d_model=32, n_heads=4, d_mlp=64,
                     dropout=0.0, n_ctx=40)
    model = build_model(kind, args, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 2, 7]
    tokens = torch.zeros(len(lengths), max(lengths) + 2, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, 1:n + 1], tokens[b, n + 1] = 2, torch.randint(5, 60, (n,), generator=g), 3
    owner = torch.tensor([b for b, n in enumerate(lengths) for _ in range(n)])
    removed = torch.tensor([p + 1 for n in lengths for p in range(n)])

    def on(device):
        m = model.to(device)
        with torch.no_grad():
            _, states = m.encode(tokens.to(device), return_states=True)
            mask = m.stack.mask(tokens.to(device))
            return [removed_states(m.stack.blocks[n - 1], states[n - 1], mask, owner.to(device), removed.to(device))
                    .cpu() for n in range(1, args.n_layers + 1)]

    for layer, (a, b) in enumerate(zip(on("cpu"), on("cuda")), start=1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=f"layer {layer}")
