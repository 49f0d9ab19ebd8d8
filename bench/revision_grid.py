"""Cost of a published checkpoint grid at a real size (not a test): a random model of pythia-160m's shape.

    python bench/revision_grid.py cost [--sentences 1000] [--threads 2]
    python bench/revision_grid.py disk [--sentences 200] [--revisions 3]

No hub: the model is built from pythia-160m's config (GPT-NeoX, 12 layers, 768 wide, 12 heads, MLP 3,072,
vocabulary 50,304, rotary on a quarter of each head, parallel residual, untied output) with random
weights, saved in float16 as the published checkpoints are (~325 MB), with a tokenizer trained on the
smoke corpus (tests/hf_models.py: the compute per token is the real model's, the tokens per sentence are
not). Its revisions sit in a "remote" folder; a download is simulated by copying a revision into the local
cache (tests/hf_cache.py), which is what `pretrained.download=true` makes `huggingface_hub` do.

- `cost`: one revision of the grid, per `--sentences` probe sentences: its dump (float32) with the logit
  lens (`dump.readout=true`) and without, and its evolution point (distance to the final revision, MI,
  neighbours, change, readout) against the final revision; seconds of each and the lens's share.
- `disk`: `--revisions` revisions and the final one dumped one after the other, downloads simulated,
  `pretrained.evict` false then true: the largest size the cache and results folders reach together
  (measured after every fetch and every dump), and the cache's size at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARCHIVE = REPO.parent / "shared/data/tatoeba-deu-eng/deu-eng.zip"
NAME = "bench-org/pythia-160m-shape"
SIZE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=2048, vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True,
            tie_word_embeddings=False)


def build(folder: Path, sentences: list[str], seed: int) -> None:
    import torch
    import transformers as t

    from tests.hf_models import gpt2_tokenizer

    tokenizer = gpt2_tokenizer(sentences, 4000)
    torch.manual_seed(seed)
    config = t.GPTNeoXConfig(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **SIZE)
    t.GPTNeoXForCausalLM(config).to(torch.float16).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def size_of(folder: Path) -> int:
    """Bytes of the files under `folder` (symlinks not followed: a cache's blobs count once)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def setup(root: Path, sentences_n: int, revisions: int):
    from pipeline.config.compose import compose
    from pipeline.prepare.corpus import read_lines
    from pipeline.prepare.stage import run as prepare

    steps = [1000 * (i + 1) for i in range(revisions)]
    base = ["experiment=smoke", f"paths.results={root / 'results'}", f"data.archive={ARCHIVE}",
            f"data.probe_size={sentences_n}", "train.progress=false", "workflow.objectives=[]",
            "workflow.init=false", "objective=lm", "label=p160", "seed=0",
            "+pretrained.models.p160={name: " + NAME + ", role: lm, revision: step100000, dtype: float32, "
            "revisions: [" + ", ".join(f"step{s}" for s in steps) + "]}"]
    prepare(compose(base))
    sentences = read_lines(root / "results" / "data" / "train.src")
    remote = root / "remote"
    for i, step in enumerate([*steps, 100000]):
        build(remote / f"step{step}", sentences, seed=i)
    return base, steps, remote


def simulate_downloads(cache: Path, remote: Path, fetched: list[str]):
    from pipeline.model import hf
    from tests.hf_cache import add_revision, repo_folder

    def download(spec):
        fetched.append(spec.revision)
        commit = add_revision(cache, NAME, spec.revision, remote / spec.revision)
        return repo_folder(cache, NAME) / "snapshots" / commit

    hf._download = download


def cost(args) -> None:
    import huggingface_hub.constants

    from analysis.measures.evolution import run as evolution
    from pipeline.config.compose import compose
    from pipeline.dump.pretrained import dump

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, steps, remote = setup(root, args.sentences, 1)
        cache = root / "hub"
        huggingface_hub.constants.HF_HUB_CACHE = str(cache)
        simulate_downloads(cache, remote, [])
        cfg = lambda *extra: compose([*base, "pretrained.download=true", *extra])
        times = {}
        t = time.perf_counter()
        dump(cfg())
        times["final dump (with lens)"] = time.perf_counter() - t
        for readout in (False, True):
            t = time.perf_counter()
            dump(cfg(f"snapshot={steps[0]}", f"dump.readout={str(readout).lower()}"))
            times[f"revision dump, lens {'on' if readout else 'off'}"] = time.perf_counter() - t
        t = time.perf_counter()
        evolution(cfg(f"snapshot={steps[0]}"))
        times["revision's evolution point"] = time.perf_counter() - t
        from pipeline.records.files import read_json

        meta = read_json(root / "results" / "snapshots" / "p160" / "seed0" / f"step{steps[0]}" / "meta.json")
        print(f"pythia-160m shape, {meta['n_sentences']} sentences, {meta['n_tokens']} rows; {args.threads} threads")
        for name, seconds in times.items():
            print(f"  {name:32} {seconds:8.1f} s")
        lens = times["revision dump, lens on"] - times["revision dump, lens off"]
        print(f"  the lens's share of a revision's dump: {lens:.1f} s of {times['revision dump, lens on']:.1f} s")


def disk(args) -> None:
    import huggingface_hub.constants

    from pipeline.config.compose import compose
    from pipeline.dump.pretrained import dump

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, steps, remote = setup(root, args.sentences, args.revisions)
        print(f"{args.revisions} revisions + the final one, {size_of(remote / 'step100000') / 1e6:.0f} MB each; "
              f"{args.sentences} probe sentences, lens off")
        for evict in (False, True):
            cache, results = root / f"hub-{evict}", root / f"results-{evict}"
            huggingface_hub.constants.HF_HUB_CACHE = str(cache)
            fetched: list[str] = []
            simulate_downloads(cache, remote, fetched)
            shutil.copytree(root / "results" / "data", results / "data")
            peak = [0]
            from pipeline.model import hf

            evict_files = hf.evict

            def measured_evict(spec, folder, evict_files=evict_files):  # the moment of the peak: dump written, files still there
                peak[0] = max(peak[0], size_of(cache) + size_of(results))
                return evict_files(spec, folder)

            hf.evict = measured_evict
            started = time.perf_counter()
            for step in [*steps, None]:
                extra = [f"paths.results={results}", "pretrained.download=true", f"pretrained.evict={str(evict).lower()}",
                         "dump.readout=false", *([] if step is None else [f"snapshot={step}"])]
                dump(compose([*base, *extra]))
                peak[0] = max(peak[0], size_of(cache) + size_of(results))  # after the fetch and dump of this revision
            hf.evict = evict_files
            peak = peak[0]
            print(f"  evict={str(evict).lower():5}  peak {peak / 1e6:7.0f} MB (cache + results), cache at the end "
                  f"{size_of(cache) / 1e6:7.0f} MB, results {size_of(results) / 1e6:5.0f} MB, {len(fetched)} fetched, "
                  f"{time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("cost", "disk"))
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--revisions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.pop("HF_HUB_OFFLINE", None)
    if args.what == "cost":
        args.sentences = args.sentences or 1000
        cost(args)
    else:
        args.sentences = args.sentences or 200
        disk(args)


if __name__ == "__main__":
    main()
