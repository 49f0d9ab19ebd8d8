# Layer-wise activations of one model on the probe sentences. stage.json is written last, so a
# folder without it (a killed dump) is never taken as finished; tokens.tsv is what the analyses read
# first. The step-0 control (objective init) has no train job: rule dump_init builds the untrained
# stack of a seed and writes its weights as models/init/seed<n>/model.pt (influence reruns them).


rule dump:
    wildcard_constraints:
        objective=TRAINED,
    input:
        model=rules.train.output.model,
        data=rules.prepare.output.data,
        tokenizer=rules.prepare.output.tokenizer,
    output:
        stage=dump_path("stage.json"),
        tokens=dump_path("tokens.tsv"),
    params:
        config_hash=dump_hash,
        run_dir=dump_path("hydra"),
    log:
        logs("dump/{objective}/seed{seed}.log"),
    benchmark:
        results("benchmarks/dump/{objective}/seed{seed}.tsv")
    threads: 1  # as the measures (workflow/rules/analysis.smk); change per run with --set-threads dump=N
    resources:
        **needs("dump", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m pipeline.dump {HYDRA_ARGS:q}"
        " objective={wildcards.objective} seed={wildcards.seed} hydra.run.dir={params.run_dir:q}"
        " > {log:q} 2>&1"


rule dump_init:
    input:
        data=rules.prepare.output.data,
        tokenizer=rules.prepare.output.tokenizer,
    output:
        stage=dump_path("stage.json", "init"),
        tokens=dump_path("tokens.tsv", "init"),
        model=model_path("model.pt", "init"),
    params:
        config_hash=init_dump_hash,
        run_dir=dump_path("hydra", "init"),
    log:
        logs("dump/init/seed{seed}.log"),
    benchmark:
        results("benchmarks/dump/init/seed{seed}.tsv")
    threads: 1
    resources:
        **needs("dump", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m pipeline.dump {HYDRA_ARGS:q}"
        " objective=init seed={wildcards.seed} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"


# A pretrained Hugging Face model (pretrained.models, pipeline/model/hf.py) over the same probe sentences:
# no train job; its files come from a local folder or the Hugging Face cache, which snakemake does not
# track (the dump's record holds the sha256 of its weights, and a rerun compares them).
rule hf_dump:
    wildcard_constraints:
        objective=PRETRAINED_LABELS,
    input:
        data=rules.prepare.output.data,
    output:
        stage=dump_path("stage.json"),
        tokens=dump_path("tokens.tsv"),
    params:
        config_hash=hf_dump_hash,
        objective=objective_args,
        run_dir=dump_path("hydra"),
    log:
        logs("dump/{objective}/seed{seed}.log"),
    benchmark:
        results("benchmarks/dump/{objective}/seed{seed}.tsv")
    threads: 2
    resources:
        **needs("dump", GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON:q} -m pipeline.dump.pretrained {HYDRA_ARGS:q}"
        " {params.objective} seed={wildcards.seed} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"
