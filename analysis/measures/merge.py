"""Concatenate per-model part tables into one (the workflow's merge rule).

    python -m analysis.measures.merge <table> <out.csv> <part.csv> [<part.csv> ...]

<table> is one of the names in analysis.tables.COLUMNS; every part must have its columns.
"""
from __future__ import annotations

import argparse
import sys

from analysis.io.tables import COLUMNS, merge_parts
from pipeline.errors import PipelineError
from pipeline.machine.faults import exit_on_machine_fault


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.measures.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=sorted(COLUMNS))
    parser.add_argument("out")
    parser.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)
    try:
        out = merge_parts(args.parts, args.out, args.table)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:  # a full or read-only disk, Ctrl-C: one line, as every stage's command line
        exit_on_machine_fault(e)
        raise
    print(f"wrote {out} from {len(args.parts)} parts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
