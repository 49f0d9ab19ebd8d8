# The measurements on the dumps. Per-model measures write one part table per (objective, seed), with
# its bootstrap replicates beside it (<part>.npz: analysis/io/tables.py); a merge job concatenates the parts
# into results/<experiment>/metrics/<table>.csv and .npz, which the report reads. The task distances compare every pair of models, so they are one job. Each rule's params
# carry the hash of its analysis settings: changing analysis.<measure>.* reruns that measure only.


rule similarity:
    input:
        dumps=model_dumps(),
    output:
        table=report(table_path("similarity"), caption="../report/similarity.rst", category="Metrics"),
        replicates=table_path("similarity", ".npz"),
    params:
        config_hash=ANALYSIS_HASH["similarity"],
        run_dir=metrics_path("hydra/similarity"),
    log:
        logs("similarity.log"),
    benchmark:
        results("benchmarks/similarity.tsv")
    threads: 2
    resources:
        **needs("similarity", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m analysis.measures.similarity {HYDRA_ARGS:q}"
        " hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


rule measure:
    input:
        unpack(measure_inputs),
    output:
        part=part_path("{measure}"),
        replicates=part_path("{measure}", suffix=".npz"),
    params:
        module=measure_module,
        config_hash=measure_hash,
        objective=objective_args,
        run_dir=metrics_path("hydra/{measure}/{objective}/seed{seed}"),
    log:
        logs("{measure}/{objective}/seed{seed}.log"),
    benchmark:
        results("benchmarks/{measure}/{objective}/seed{seed}.tsv")
    # One thread per job, two jobs at once on two cores: a second thread gained nothing at these sizes
    # (t-SNE 15.4 vs 16.9 s, change 13.1 vs 13.0 s on a quiet AMD EPYC), and beside one other busy
    # process a 2-thread job spun 2-3x slower (t-SNE 49.9 s, change 29.2 s) while a 1-thread job did
    # not (16.7 s, 13.6 s). More cores: --set-threads measure=N.
    threads: 1
    resources:
        **needs("measure", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m {params.module} {HYDRA_ARGS:q}"
        " {params.objective} seed={wildcards.seed} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


rule merge:
    input:
        parts=measure_parts,
    output:
        table=report(table_path("{measure}"), caption="../report/metrics.rst", category="Metrics",
                     subcategory="{measure}"),
        replicates=table_path("{measure}", ".npz"),
    log:
        logs("merge/{measure}.log"),
    benchmark:
        results("benchmarks/merge_{measure}.tsv")
    shell:
        "{PYTHON:q} -m analysis.measures.merge {wildcards.measure:q} {output.table:q} {input.parts:q} > {log:q} 2>&1"
