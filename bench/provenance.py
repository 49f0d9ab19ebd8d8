"""What the provenance checks cost on a finished experiment (not a test).

    python bench/provenance.py results/default [--report reports/default] [--repeat 3]

On the records the stages left under the results folder, times:
- hashing while writing: the experiment's largest outputs (the layer files) written again to a
  temporary folder, plainly and through `pipeline.records.files.HashingFile` (sha256 as the bytes go out),
  in the same run; the ratio, and the extra seconds extrapolated to every byte the stages wrote;
- the workflow's start-up check (`damaged_outputs`: one stat per recorded output);
- every stage's own currency check, as each does before its work (`stage_problem`: settings,
  inputs' recorded hashes, outputs' sizes, a hash where an mtime moved);
- `pipeline.verify` (every output hashed in full).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.records.stage import damaged_outputs, read_record, records_under, stage_problem
from pipeline.records.files import HashingFile, STAGE_RECORD
from pipeline.verify import verify  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def write_plain(blobs: list[bytes], folder: Path) -> None:
    for i, blob in enumerate(blobs):
        with open(folder / f"plain{i}", "wb") as f:
            for start in range(0, len(blob), 1 << 20):
                f.write(blob[start:start + (1 << 20)])
            f.flush()
            os.fsync(f.fileno())


def write_hashed(blobs: list[bytes], folder: Path) -> None:
    for i, blob in enumerate(blobs):
        with open(folder / f"hashed{i}", "wb") as raw:
            f = HashingFile(raw)
            for start in range(0, len(blob), 1 << 20):
                f.write(blob[start:start + (1 << 20)])
            raw.flush()
            os.fsync(raw.fileno())
            f.sha256  # noqa: B018 - the digest is part of the cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sample-mb", type=float, default=256, help="bytes of layer files rewritten for the ratio")
    args = parser.parse_args()

    records = records_under(args.results)
    outputs = [(r.parent / key, entry.size) for r in records
               for key, entry in (getattr(read_record(r), "outputs", None) or {}).items()]
    total = sum(size for _, size in outputs)
    print(f"{args.results}: {len(records)} records, {len(outputs)} outputs, {total / 1e6:.1f} MB")

    layers = sorted((p for p, _ in outputs if p.name.startswith("layer_")), key=lambda p: -p.stat().st_size)
    blobs, taken = [], 0
    for path in layers:
        if taken >= args.sample_mb * 1e6:
            break
        blobs.append(path.read_bytes())
        taken += len(blobs[-1])
    with tempfile.TemporaryDirectory(dir=args.results) as tmp:
        plain = best_of(args.repeat, lambda: write_plain(blobs, Path(tmp)))
        hashed = best_of(args.repeat, lambda: write_hashed(blobs, Path(tmp)))
    extra_per_byte = max(hashed - plain, 0.0) / max(taken, 1)
    print(f"write {taken / 1e6:.0f} MB of layer files: plain {plain:.3f} s, hashed while written {hashed:.3f} s "
          f"(ratio {hashed / plain:.2f}); extra over all {total / 1e6:.0f} MB written: "
          f"{extra_per_byte * total:.2f} s")

    startup = best_of(args.repeat, lambda: damaged_outputs(args.results))
    print(f"workflow start-up check (one stat per output): {startup:.3f} s")

    folders = [r.parent if r.name == STAGE_RECORD else r for r in records]
    currency = best_of(args.repeat, lambda: [stage_problem(f) for f in folders])
    print(f"every stage's currency check, summed over {len(folders)} stages: {currency:.3f} s")

    roots = [args.results, *([args.report] if args.report else [])]
    started = time.perf_counter()
    found = verify(roots)
    print(f"pipeline.verify: {len(found)} records, {sum(n for _, _, n, _ in found)} files, "
          f"{sum(b for _, _, _, b in found) / 1e6:.1f} MB in {time.perf_counter() - started:.2f} s; "
          f"{sum(1 for _, p, _, _ in found if p)} problems")


if __name__ == "__main__":
    main()
