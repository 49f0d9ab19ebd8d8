"""Dump time of pretrained-size Hugging Face models (not a test): `pipeline.dump.pretrained` against a plain loop.

    python bench/hf_dump.py [--sentences 1000] [--models bert gpt2 marian] [--threads 2]

No hub: the models are built from configs at the sizes of bert-base-cased (12 layers, 768 wide,
vocabulary 28,996), gpt2 (12, 768, 50,257) and Helsinki-NLP/opus-mt-en-de (6 + 6 layers, 512 wide,
58,101) with random weights, and tokenizers trained on the smoke corpus (tests/hf_models.py): the
compute per token is the real models', the tokenisation (and so the tokens per sentence) is not.
For each model: the dump of `--sentences` probe sentences (unmasked run only: dump.mlm_masked=false)
and the reference, one `stack(**tokenizer(line), output_hidden_states=True)` per sentence with the
states copied to numpy and nothing written; both in this process, on the CPU, float32. Prints the
tokens per second of each and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARCHIVE = REPO.parent / "shared/data/tatoeba-deu-eng/deu-eng.zip"

SIZES = {  # the published configs' sizes (config.json of each hub model)
    "bert": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, vocab_size=28996),
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
    "marian": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                   decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                   max_position_embeddings=512, vocab_size=58101),
}
ROLES = {"bert": "mlm", "gpt2": "lm", "marian": "mt"}


def build(kind: str, folder: Path, sentences: list[str]) -> None:
    import torch
    import transformers as t

    from tests.hf_models import bert_tokenizer, gpt2_tokenizer, marian_tokenizer

    tokenizer = {"bert": bert_tokenizer, "gpt2": gpt2_tokenizer, "marian": marian_tokenizer}[kind](sentences, 4000)
    tokenizer.model_max_length = 512
    torch.manual_seed(0)
    if kind == "bert":
        model = t.BertForMaskedLM(t.BertConfig(pad_token_id=tokenizer.pad_token_id, **SIZES[kind]))
    elif kind == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               **SIZES[kind]))
    else:
        model = t.MarianMTModel(t.MarianConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                               decoder_start_token_id=tokenizer.pad_token_id, **SIZES[kind]))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def reference(folder: Path, kind: str, lines: list[str]) -> tuple[int, float]:
    """(tokens, seconds) of one forward pass per sentence, states copied out."""
    import torch

    from pipeline.model import hf
    from pipeline.config import pretrained

    _, stack, tok = hf.load(pretrained.HFSpec(kind, str(folder)), folder, ROLES[kind], torch.device("cpu"), torch.float32)
    n, started = 0, time.perf_counter()
    with torch.inference_mode():
        for line in lines:
            enc = tok(line, return_tensors="pt")
            states = stack(**enc, output_hidden_states=True).hidden_states
            _ = [s[0].numpy().copy() for s in states]
            n += int(enc["input_ids"].shape[1])
    return n, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.config.compose import compose
    from pipeline.prepare.corpus import read_lines
    from pipeline.dump.pretrained import dump
    from pipeline.prepare.stage import run as prepare
    from pipeline.records.files import read_json

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = ["experiment=smoke", f"paths.results={root / 'results'}", f"data.archive={ARCHIVE}",
                f"data.probe_size={args.sentences}", "train.progress=false", "dump.mlm_masked=false",
                "workflow.objectives=[]", "workflow.init=false"]
        prepare(compose(base))
        data = root / "results" / "data"
        sentences, probe = read_lines(data / "train.src"), read_lines(data / "probe.txt")
        print(f"{len(probe)} probe sentences; CPU, {args.threads} threads, float32, torch {torch.__version__}")
        print(f"{'model':8} {'dump tok/s':>11} {'dump s':>8} {'loop tok/s':>11} {'loop s':>8} {'ratio':>6}")
        for kind in args.models:
            folder = root / kind
            build(kind, folder, sentences)
            cfg = compose([*base, f"+pretrained.models.{kind}={{name: {folder}}}", f"objective={ROLES[kind]}",
                           f"objective.name={kind}", "seed=0"])
            started = time.perf_counter()
            out = dump(cfg)
            dump_s = time.perf_counter() - started
            n_rows = read_json(out / "meta.json")["n_tokens"]
            n_in, loop_s = reference(folder, kind, [probe[i] for i in range(len(probe))])
            print(f"{kind:8} {n_in / dump_s:11.0f} {dump_s:8.1f} {n_in / loop_s:11.0f} {loop_s:8.1f} "
                  f"{loop_s / dump_s:6.2f}   ({n_rows} rows, {n_in} input tokens with specials)")


if __name__ == "__main__":
    main()
