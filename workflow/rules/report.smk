# The experiment's HTML report (python -m analysis.report): the study's figures and tables, the claim
# checks and provenance in one self-contained file at <paths.report>/report.html, also flagged for
# `snakemake --report`; the claims' verdicts, contrast by contrast, in results/<experiment>/metrics/claims.csv. Besides the six merged tables it reads the model summaries and logs, the
# stage records and the benchmark files, all finished before the tables are.
from pipeline.config.stages import report_config  # noqa: E402  (light: no torch, no matplotlib)

REPORT_DIR = os.path.normpath(str(BASE.paths.report))
if not _PLAIN_PATH.match(REPORT_DIR):
    fail(f"setting paths.report={REPORT_DIR!r}: use a path of letters, digits and "
                        "_ . / @ + - only (it is passed to Hydra on the command line)")
# Hash of the resolved config the report shows and checks its claims with (runtime keys left out).
REPORT_HASH = config_hash(report_config(BASE))


rule report:
    input:
        metric_tables(),
        evolution_tables(),
    output:
        html=report(f"{REPORT_DIR}/report.html", caption="../report/report.rst", category="Report"),
        claims=report(results("metrics/claims.csv"), caption="../report/claims.rst", category="Report"),
    params:
        config_hash=REPORT_HASH,
        run_dir=f"{REPORT_DIR}/hydra",
    log:
        logs("report.log"),
    benchmark:
        results("benchmarks/report.tsv")
    threads: 1
    shell:
        "{PYTHON:q} -m analysis.report {HYDRA_ARGS:q} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"
