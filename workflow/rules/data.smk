# The corpus split and the tokenizer trained on it: one job per experiment, shared by every model.
# The corpus file itself (data.archive / data.src_file, data.tgt_file) is not an input, so that a
# dry run needs no data; pipeline.prepare records its sha256 in data/stage.json.


rule prepare:
    output:
        data=results("data/stage.json"),
        tokenizer=results("tokenizer/stage.json"),
    params:
        data_hash=DATA_HASH,
        tokenizer_hash=TOKENIZER_HASH,
        run_dir=results("data/hydra"),
    log:
        logs("prepare.log"),
    benchmark:
        results("benchmarks/prepare.tsv")
    threads: 4  # sentencepiece trains with 4 threads
    shell:
        "{PYTHON:q} -m pipeline.prepare {HYDRA_ARGS:q} hydra.run.dir={params.run_dir:q}"
        " > {log:q} 2>&1"
