# The corpus split and the tokenizer trained on it: one job per experiment, shared by every model.
# The corpus files (data.archive, or data.src_file and data.tgt_file) are inputs: editing one reruns
# prepare, which compares their sha256 with data/stage.json and redoes the split. The default archive
# (data.archive null) is downloaded by rule download from data.url to data.resources_dir.


if DEFAULT_ARCHIVE is not None:

    rule download:
        output:
            archive=DEFAULT_ARCHIVE,
        params:
            run_dir=data_path("hydra"),
        log:
            logs("download.log"),
        shell:
            "{PYTHON:q} -m pipeline.prepare.fetch {HYDRA_ARGS:q} hydra.run.dir={params.run_dir:q} > {log:q} 2>&1"

    localrules:
        download,


rule prepare:
    input:
        corpus=corpus_inputs,
    output:
        data=data_path("stage.json"),
        tokenizer=tokenizer_path("stage.json"),
    params:
        data_hash=DATA_HASH,
        tokenizer_hash=TOKENIZER_HASH,
        run_dir=data_path("hydra"),
    log:
        logs("prepare.log"),
    benchmark:
        results("benchmarks/prepare.tsv")
    threads: 4  # sentencepiece trains with 4 threads
    resources:
        **needs("prepare"),
    shell:
        "{PYTHON:q} -m pipeline.prepare {HYDRA_ARGS:q} hydra.run.dir={params.run_dir:q}"
        " > {log:q} 2>&1"
