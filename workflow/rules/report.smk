# The experiment's HTML report (python -m analysis.report): the study's figures and tables, the claim
# checks and provenance in one self-contained file at <paths.report>/report.html, also flagged for
# `snakemake --report`; the claims' verdicts, contrast by contrast, in results/<experiment>/metrics/claims.csv. Besides the merged tables it reads the model summaries and logs, the
# stage records and the benchmark files, all finished before the tables are.


rule report:
    input:
        metric_tables(),
        evolution_tables(),
    output:
        html=report(_path(layout.report_file(BASE), ""), caption="../report/report.rst", category="Report"),
        claims=report(table_path("claims"), caption="../report/claims.rst", category="Report"),
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
