# One model per objective and seed. pipeline.train checkpoints to last.pt beside model.pt every
# train.eval_every steps; last.pt is not an output, so snakemake keeps it when a job fails or is
# killed, and the rerun job resumes from it (model.pt, written at the end, is what marks success).
# A checkpoint rule: which snapshots a training kept (snapshots.*) is known once it has run, and the
# snapshot jobs (rules/evolution.smk) are planned then.


checkpoint train:
    wildcard_constraints:
        objective=TRAINED,  # never init: the step-0 control is built by rule dump_init
    input:
        data=rules.prepare.output.data,
        tokenizer=rules.prepare.output.tokenizer,
    output:
        model=model_path("model.pt"),
    params:
        config_hash=train_hash,
        run_dir=model_path("hydra"),
    log:
        logs("train/{objective}/seed{seed}.log"),
    benchmark:
        results("benchmarks/train/{objective}/seed{seed}.tsv")
    priority: train_priority  # longest cap first
    threads: 1  # one thread per job: with other jobs beside it, a 2-thread job on 2 cores spun 8x slower
    # (3.8 s vs 0.46 s per LM step, measured); on more cores: --set-threads train=N
    resources:
        **needs("train", TRAIN_GPUS),
    shell:
        "{TRAIN_LAUNCHER:q} -m pipeline.train {HYDRA_ARGS:q} objective={wildcards.objective} seed={wildcards.seed}"
        " train.threads={threads} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"
