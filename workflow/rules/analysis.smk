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
    # One thread per job, two jobs at once on two cores: on a quiet AMD EPYC a second thread made a job
    # only 13-22% faster (bench/threads.py: t-SNE 18.7 -> 15.0 s, change 15.8 -> 13.7 s), so two 1-thread
    # jobs do more work than one 2-thread job; beside one other busy process a 2-thread job spun about 2x
    # slower (t-SNE 42.9 s, change 31.2 s) while a 1-thread job did not (20.6 s, 14.4 s). More cores:
    # --set-threads measure=N.
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
