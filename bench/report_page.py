"""The report page's budgets: its size and how fast headless Chromium paints it, with the live views and
without them (analysis.report.interactive=false, the static page of before), in the same run.

    python bench/report_page.py [--results results/default] [--experiment default] [--repeats 5]

Builds both pages from a finished results folder in memory (nothing is written into the folder: the claim
table is checked in memory), writes them to a temporary folder, and opens each `--repeats` times in a fresh
headless Chromium (Debian's chromium + chromedriver through Selenium, tests/browser.py): first contentful
paint, the load event, and the time until every live view has drawn once scrolled to (median over the
repeats). Prints the sizes, their difference and each view's share of the page. The budgets (issue 29): at
most 2 MB more than the static page, first paint within 2 s.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.report.stage import build
from bench.machine import describe
from pipeline.config.compose import compose
from tests import browser as web


def page(results: str, experiment: str, live: bool) -> tuple[str, float]:
    cfg = compose([f"experiment={experiment}", f"paths.results={results}",
                   f"analysis.report.interactive={'true' if live else 'false'}"])
    started = time.perf_counter()
    text = build(cfg, probe_hardware=False, claims_out=None)
    return text, time.perf_counter() - started


def timings(path: Path, repeats: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {"first paint": [], "load": [], "every view drawn": []}
    for _ in range(repeats):
        with web.browser() as driver:
            web.open_page(driver, path)
            times = driver.execute_script(
                "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                "const n = performance.getEntriesByType('navigation')[0];"
                "return [p ? p.startTime : null, n ? n.loadEventEnd : null];")
            runs["first paint"].append(times[0])
            runs["load"].append(times[1])
            views = driver.find_elements("css selector", "div.live[data-view]")
            started = time.perf_counter()
            for view in views:
                web.start_view(driver, view)
            runs["every view drawn"].append(1000 * (time.perf_counter() - started) if views else 0.0)
            if web.console_errors(driver):
                raise SystemExit(f"{path}: the page logged errors: {web.console_errors(driver)}")
            asked = web.requests(driver)
            if asked != [path.resolve().as_uri()]:
                raise SystemExit(f"{path}: the page asked for {asked}")
    return {k: statistics.median(v) for k, v in runs.items() if all(x is not None for x in v)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/default")
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if (why := web.missing()) is not None:
        raise SystemExit(f"cannot time the page: {why}")
    print(describe())
    out = Path(tempfile.mkdtemp(prefix="report-page-"))
    sizes = {}
    for live in (False, True):
        text, took = page(args.results, args.experiment, live)
        name = "interactive" if live else "static"
        path = out / f"{name}.html"
        path.write_text(text, encoding="utf-8")
        sizes[name] = len(text.encode("utf-8"))
        t = timings(path, args.repeats)
        print(f"{name:12s} {sizes[name] / 1e6:7.3f} MB (built in {took:.1f} s); median of {args.repeats}: "
              + ", ".join(f"{k} {v:.0f} ms" for k, v in t.items()))
        if live:
            blocks = re.findall(r'<script type="application/json" id="(\w+)-[0-9a-f]+">(.*?)</script>', text, re.DOTALL)
            per: dict[str, int] = {}
            for kind, body in blocks:
                per[kind] = per.get(kind, 0) + len(body.encode("utf-8"))
            script = re.search(r"<script>(.*?)</script>", text, re.DOTALL)
            print("  live data: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sorted(per.items()))
                  + f"; script {len(script.group(1).encode()) / 1e3:.1f} kB" if script else "")
    print(f"difference: {(sizes['interactive'] - sizes['static']) / 1e6:+.3f} MB (budget: +2 MB); pages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
