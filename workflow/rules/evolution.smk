# Evolution over training (analysis/measures/evolution.py). The models of snapshots.models keep their weights at
# the steps of snapshots.keep while they train (models/<objective>/seed<n>/snapshots/step<N>.pt); once a
# model is trained (rule train is a checkpoint), each analysed kept step is dumped on the probe set by
# the dump stage (rule dump_snapshot) and measured against the finished model (rule evolution), and a
# merge job gathers every point into results/<experiment>/metrics/evolution.csv for the report.
# Changing snapshots.steps changes which points exist: only those jobs, the merge and the report run.
# A pretrained model with a revision grid (pretrained.models.<label>.revisions: Pythia's step0 .. step143000)
# has its points from its settings: each revision is dumped by rule hf_dump_snapshot and measured against
# the model's own dump (its `revision`) by the same rule evolution.


rule dump_snapshot:
    wildcard_constraints:
        objective=TRAINED,
    input:
        model=model_path("model.pt"),
        data=rules.prepare.output.data,
        tokenizer=rules.prepare.output.tokenizer,
    output:
        stage=snapshot_path("stage.json"),
        tokens=snapshot_path("tokens.tsv"),
    params:
        config_hash=snapshot_dump_hash,
        run_dir=snapshot_run_dir(),
    log:
        logs("dump/{objective}/seed{seed}/step{step}.log"),
    benchmark:
        results("benchmarks/snapshot_dump/{objective}/seed{seed}/step{step}.tsv")
    threads: 1  # small and many: one thread each, two at once on two cores
    resources:
        **needs("dump", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m pipeline.dump {HYDRA_ARGS:q} objective={wildcards.objective}"
        " seed={wildcards.seed} snapshot={wildcards.step} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


rule hf_dump_snapshot:
    wildcard_constraints:
        objective=PRETRAINED_LABELS,
    input:
        data=rules.prepare.output.data,
    output:
        stage=snapshot_path("stage.json"),
        tokens=snapshot_path("tokens.tsv"),
    params:
        config_hash=snapshot_dump_hash,
        objective=objective_args,
        run_dir=snapshot_run_dir(),
    log:
        logs("dump/{objective}/seed{seed}/step{step}.log"),
    benchmark:
        results("benchmarks/snapshot_dump/{objective}/seed{seed}/step{step}.tsv")
    threads: 2
    resources:
        **needs("dump", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m pipeline.dump.pretrained {HYDRA_ARGS:q} {params.objective}"
        " seed={wildcards.seed} snapshot={wildcards.step} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


rule evolution:
    input:
        unpack(evolution_inputs),
    output:
        part=evolution_path(),
        replicates=evolution_path(suffix=".npz"),
    params:
        config_hash=EVOLUTION_HASH,
        snapshot=lambda wildcards: "null" if wildcards.point == "final" else wildcards.point[len("step"):],
        objective=objective_args,
        run_dir=metrics_path("hydra/evolution/{objective}/seed{seed}/{point}"),
    log:
        logs("evolution/{objective}/seed{seed}/{point}.log"),
    benchmark:
        results("benchmarks/evolution/{objective}/seed{seed}/{point}.tsv")
    threads: 1
    resources:
        **needs("evolution", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m analysis.measures.evolution {HYDRA_ARGS:q} {params.objective}"
        " seed={wildcards.seed} snapshot={params.snapshot} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


# The revisions of the pretrained grids checked for what they claim to be (analysis/measures/revisions.py):
# their dumps' records compared, weights and states; nothing is rerun.
rule revisions:
    input:
        dumps=revision_dumps,
    output:
        table=table_path("revisions"),
        replicates=table_path("revisions", ".npz"),
    params:
        run_dir=metrics_path("hydra/revisions"),
    log:
        logs("revisions.log"),
    benchmark:
        results("benchmarks/revisions.tsv")
    shell:
        "{PYTHON:q} -m analysis.measures.revisions {HYDRA_ARGS:q} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


rule merge_evolution:
    input:
        parts=evolution_parts,
    output:
        table=report(table_path("evolution"), caption="../report/metrics.rst", category="Metrics",
                     subcategory="evolution"),
        replicates=table_path("evolution", ".npz"),
    log:
        logs("merge/evolution.log"),
    benchmark:
        results("benchmarks/merge_evolution.tsv")
    shell:
        "{PYTHON:q} -m analysis.measures.merge evolution {output.table:q} {input.parts:q} > {log:q} 2>&1"
