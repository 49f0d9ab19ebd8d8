"""Peak resident memory of `pipeline.dump` against the size of the probe set (not a test).

    python bench/dump_memory.py [--sizes 2000 8000 32000] [--model small] [--batch-tokens 8192] [--mlm]

Builds the smoke experiment's data and tokenizer in a temporary folder, saves an untrained model of
`--model` as model.pt (the dump does not care whether it was trained), then for each size writes a
probe.txt of that many sentences (train.mono lines, cycled) and runs the dump in a fresh process,
which reports its own peak RSS. A streamed dump's peak should stay flat while the output grows.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the pipeline package is not installed here
ARCHIVE = REPO.parent / "shared/data/tatoeba-deu-eng/deu-eng.zip"
from tests.synthetic import replace_output  # noqa: E402  (rewrites probe.txt and its record)

# Run in a child so that each measurement starts from a clean process; prints "n_tokens peak_kib".
CHILD = """
import resource, sys
from pipeline.config.compose import compose
from pipeline.dump.stage import dump
from pipeline.records.stage import read_json
cfg = compose(sys.argv[1:])
out = dump(cfg)
meta = read_json(out / "meta.json")
print(meta["n_tokens"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

# The same child without the dump: what importing torch and loading the model costs alone.
BASELINE = """
import resource, sys
from pipeline.config.compose import compose
from pipeline.dump.stage import _load_checkpoint
from pathlib import Path
cfg = compose(sys.argv[1:])
_load_checkpoint(cfg, Path(cfg.paths.model) / "model.pt")
print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def overrides(root: Path, model: str, objective: str, *extra: str) -> list[str]:
    return ["experiment=smoke", f"paths.results={root}", f"data.archive={ARCHIVE}", f"model={model}",
            f"objective={objective}", "dump.device=cpu", "train.progress=false", *extra]


def setup(root: Path, model: str, objective: str) -> None:
    """Data, tokenizer and an untrained model.pt in the format train.py writes."""
    from omegaconf import OmegaConf

    from pipeline.config.compose import compose, to_plain
    from pipeline.config.stages import train_config
    from pipeline.prepare.corpus import prepare_data
    from pipeline.model.transformer import ModelArgs, build_model
    from pipeline.records.files import config_hash, torch_save
    from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer

    cfg = compose(overrides(root, model, objective))
    prepare_data(cfg)
    train_tokenizer(cfg)
    tok = Tokenizer.load(cfg.paths.tokenizer)
    args = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))
    net = build_model(cfg.objective.kind, args, int(cfg.seed))
    torch_save({"model": net.checkpoint_args(), "state_dict": net.state_dict(),
                "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": config_hash(train_config(cfg)),
                "tokenizer": str(cfg.paths.tokenizer), "summary": {"note": "untrained (benchmark)"}},
               Path(cfg.paths.model) / "model.pt")


def run_child(code: str, args: list[str]) -> tuple[int, int, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"child failed:\n{done.stderr[-3000:]}")
    n_tokens, peak_kib = map(int, done.stdout.split()[-2:])
    return n_tokens, peak_kib, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--batch-tokens", type=int, default=8192, help="dump.batch_tokens")
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml")
    parser.add_argument("--mlm", action="store_true", help="an MLM model: also the masked set")
    ns = parser.parse_args()
    if not ARCHIVE.is_file():
        sys.exit(f"{ARCHIVE} not found")
    objective = "mlm" if ns.mlm else "lm"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(root, ns.model, objective)
        data = root / "data"
        mono = (data / "train.mono").read_text(encoding="utf-8").splitlines()
        _, base_kib, _ = run_child(BASELINE, overrides(root, ns.model, objective))
        print(f"model={ns.model} objective={objective} batch_tokens={ns.batch_tokens}: baseline (imports + model) peak RSS {base_kib / 1024:.0f} MiB")
        print(f"{'sentences':>10} {'tokens':>9} {'dump MiB':>9} {'peak RSS MiB':>13} {'over baseline':>14} {'s':>6}")
        for size in ns.sizes:
            lines = [mono[i % len(mono)] for i in range(size)]
            replace_output(data / "probe.txt", "".join(f"{line}\n" for line in lines))  # re-recorded
            out = root / f"dump{size}"
            n_tokens, peak_kib, secs = run_child(CHILD, overrides(root, ns.model, objective, f"paths.dump={out}",
                                                                 f"dump.batch_tokens={ns.batch_tokens}"))
            on_disk = sum(p.stat().st_size for p in out.rglob("*.npy")) / 2**20
            print(f"{size:>10} {n_tokens:>9} {on_disk:>9.1f} {peak_kib / 1024:>13.0f} "
                  f"{(peak_kib - base_kib) / 1024:>14.0f} {secs:>6.1f}")


if __name__ == "__main__":
    main()
