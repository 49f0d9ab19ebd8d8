"""The Snakemake workflow without running any stage: the DAG of every experiment, the early errors
for bad settings, and which jobs a changed setting reruns.

Jobs are never executed: dry runs only, plus snakemake's `touch` mode, which marks hand-made
placeholder outputs as finished (recording the metadata its rerun triggers compare: params, input,
code) so that the later dry runs see a completed workflow.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path, PurePosixPath

import pytest

snakemake_api = pytest.importorskip("snakemake.api")
from snakemake.exceptions import WorkflowError  # noqa: E402
from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,  # noqa: E402
                                      ResourceSettings)

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
CONFIGFILE = REPO / "workflow" / "config.yaml"
# 5 objectives, seeds mt/lm/mlm x2, mt_td/lm_td x1: 8 trained models, and the step-0 control `init` of
# seeds 1 and 2 (dumped, never trained); 4 per-model measures on each of the 10, t-SNE and the neighbours
# explorer's examples on the first seed of each objective and of init, the readout of the 5 LM and MLM models
# (57 jobs); 7 merged tables, the task distances, the report.
# Evolution over training: the snapshot dumps and their measures are planned once the models of
# snapshots.models are trained (rule train is a checkpoint); before that a dry run shows their merge.
GRID = {"prepare": 1, "train": 8, "dump": 8, "dump_init": 2, "measure": 57, "merge": 7, "similarity": 1,
        "report": 1, "snapshot_dump": 0, "evolution": 0, "merge_evolution": 1, "revisions": 0}
RULES = tuple(GRID)
TABLES = ("change", "influence", "mi", "neighbours", "tsne", "readout", "examples")
PAPER_DATA = ["data.src_file=/nonexistent/train.en", "data.tgt_file=/nonexistent/train.de"]


def run_workflow(workdir: Path, config: dict, executor: str = "dryrun", forceall: bool = False) -> list[str]:
    """Run the workflow in `workdir` with a pseudo-executor (dryrun or touch); returns the outputs
    of the jobs it schedules (empty: nothing to be done)."""
    scheduled: list[str] = []
    with snakemake_api.SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(config=config, configfiles=[CONFIGFILE]),
            snakefile=SNAKEFILE, workdir=workdir)
        dag = workflow.dag(DAGSettings(forceall=forceall))
        dag.execute_workflow(executor=executor, updated_files=scheduled)
    return scheduled


def jobs_per_rule(outputs: list[str]) -> dict[str, int]:
    """Jobs of each rule, recognised by their main output."""
    counts: collections.Counter[str] = collections.Counter()
    for path in map(PurePosixPath, outputs):
        if path.suffix == ".npz" or path.name == "claims.csv":  # a table's replicates, the report's verdicts
            continue
        if path.name == "model.pt" and "models" in path.parts:
            counts["train"] += path.parts[-3] != "init"  # rule dump_init writes the step-0 weights
        elif path.name == "stage.json" and "snapshots" in path.parts:
            counts["snapshot_dump"] += 1
        elif "metrics" in path.parts and len(path.parts) > 4 and path.parts[-4] == "evolution":
            counts["evolution"] += 1
        elif path.parent.name == "metrics" and path.stem == "evolution":
            counts["merge_evolution"] += 1
        elif path.parent.name == "metrics" and path.stem == "revisions":
            counts["revisions"] += 1
        elif path.name == "stage.json" and "dumps" in path.parts:
            counts["dump_init" if path.parts[-3] == "init" else "dump"] += 1
        elif path.name == "stage.json" and path.parent.name == "data":
            counts["prepare"] += 1
        elif path.name == "report.html":
            counts["report"] += 1
        elif path.parent.name == "metrics" and path.stem == "similarity":
            counts["similarity"] += 1
        elif path.parent.name == "metrics" and path.stem in TABLES:
            counts["merge"] += 1
        elif "metrics" in path.parts and path.parts[-3] in TABLES:
            counts["measure"] += 1
    return {rule: counts[rule] for rule in RULES}


# ---------------------------------------------------------------- the DAG of each experiment

@pytest.mark.parametrize("experiment,overrides", [("smoke", []), ("default", []), ("study", []), ("paper", PAPER_DATA)])
def test_dry_run_schedules_the_whole_grid(tmp_path, experiment, overrides):
    outputs = run_workflow(tmp_path, {"experiment": experiment, "overrides": overrides})
    assert jobs_per_rule(outputs) == GRID
    # every metric table has its replicates beside it (analysis.tables.REPLICATED); the report, its claims
    tables = {p for p in outputs if "/metrics/" in p and p.endswith(".csv") and not p.endswith("claims.csv")}
    assert {p[:-len(".csv")] + ".npz" for p in tables} == {p for p in outputs if p.endswith(".npz")}
    assert f"results/{experiment}/metrics/claims.csv" in outputs
    assert all(path.startswith((f"results/{experiment}/", f"reports/{experiment}/", "resources/")) for path in outputs)
    # the corpus is an input: the default archive is downloaded by a job; paper's parallel files are the user's
    assert ("resources/deu-eng.zip" in outputs) == (experiment != "paper")
    assert f"reports/{experiment}/report.html" in outputs
    assert f"results/{experiment}/models/mlm/seed2/model.pt" in outputs
    assert f"results/{experiment}/dumps/lm_td/seed1/tokens.tsv" in outputs
    assert f"results/{experiment}/dumps/init/seed2/tokens.tsv" in outputs
    assert f"results/{experiment}/metrics/influence/init/seed1.csv" in outputs
    assert f"results/{experiment}/metrics/tsne/init/seed1.csv" in outputs
    assert f"results/{experiment}/metrics/tsne/init/seed2.csv" not in outputs
    assert f"results/{experiment}/metrics/examples/mt/seed1.csv" in outputs
    assert f"results/{experiment}/metrics/examples/mt/seed2.csv" not in outputs
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists(), "a dry run created outputs"


def test_grid_and_results_folder_follow_the_hydra_config(tmp_path):
    overrides = ["workflow.objectives=[mt,mlm]", "workflow.seeds={mt:[1],mlm:[3,4]}", "paths.results=out/run1"]
    outputs = run_workflow(tmp_path, {"experiment": "smoke", "overrides": overrides})
    # the step-0 control of every seed in use (1, 3, 4): 4 measures on each of 6 models, t-SNE and examples on 3
    assert jobs_per_rule(outputs) == {"prepare": 1, "train": 3, "dump": 3, "dump_init": 3, "measure": 32, "merge": 7,
                                      "similarity": 1, "report": 1, "snapshot_dump": 0, "evolution": 0,
                                      "merge_evolution": 1, "revisions": 0}  # mt seed 1 keeps snapshots
    assert sorted(p for p in outputs if p.endswith("model.pt")) == [
        "out/run1/models/init/seed1/model.pt", "out/run1/models/init/seed3/model.pt",
        "out/run1/models/init/seed4/model.pt", "out/run1/models/mlm/seed3/model.pt",
        "out/run1/models/mlm/seed4/model.pt", "out/run1/models/mt/seed1/model.pt"]


def test_init_control_can_be_switched_off(tmp_path):
    outputs = run_workflow(tmp_path, {"experiment": "smoke", "overrides": ["workflow.init=false"]})
    assert jobs_per_rule(outputs) == {**GRID, "dump_init": 0, "measure": 47}
    assert not [p for p in outputs if "/init/" in p]


# ---------------------------------------------------------------- bad settings fail before any job

@pytest.mark.parametrize("config,named", [
    ({"experiment": "nope"}, ["'experiment'", "nope"]),
    ({"experiment": "smoke", "overrides": ["model.d_modell=32"]}, ["overrides", "model.d_modell=32"]),
    ({"experiment": "smoke", "overrides": ["model=huge"]}, ["overrides", "model=huge"]),
    ({"experiment": "smoke", "overrides": ["model.d_model"]}, ["overrides", "model.d_model"]),
    ({"experiment": "smoke", "overrides": ["seed=3"]}, ["overrides", "seed=3"]),
    ({"experiment": "smoke", "overrides": ["workflow.objectives=[mt,nope]"]}, ["workflow.objectives", "nope"]),
    ({"experiment": "smoke", "overrides": ["workflow.seeds.lm=[]"]}, ["workflow.seeds.lm"]),
    ({"experiment": "smoke", "overrides": ["workflow.objectives=[mt,init]", "+workflow.seeds.init=[1]"]},
     ["workflow.objectives", "'init'", "step-0"]),
    ({"experiment": "smoke", "overrides": ["workflow.init=sometimes"]}, ["workflow.init", "sometimes"]),
    ({"experiment": "paper"}, ["data.src_file"]),
    ({"experiment": "smoke", "gpus": 2}, ["gpus"]),
    ({"experiment": "smoke", "experimnet": "smoke"}, ["experimnet"]),
    ({"experiment": "smoke", "overrides": ["experiment_name=../../outside"]}, ["experiment_name", "plain name"]),
    ({"experiment": "smoke", "overrides": ["experiment_name="]}, ["experiment_name", "plain name"]),
    ({"experiment": "smoke", "overrides": ["+pretrained.models.mt={name: gpt2}"]}, ["pretrained.models.mt"]),
    ({"experiment": "pretrained", "overrides": ["pretrained.models.gpt2={name: no-such-org/no-such-model, role: null}"]},
     ["pretrained.models.gpt2.role", "hf download no-such-org/no-such-model"]),
    ({"experiment": "pretrained", "overrides": ["pretrained.models.bert=null", "pretrained.models.gpt2=null",
                                               "pretrained.models.opus-mt-en-de=null"]},
     ["workflow.objectives", "pretrained.models"]),
])
def test_bad_setting_fails_before_any_job(tmp_path, config, named):
    with pytest.raises(WorkflowError) as failure:
        run_workflow(tmp_path, config)
    message = str(failure.value)
    for word in named:
        assert word in message, f"{word!r} not named in: {message}"
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- rerun triggers

@pytest.fixture(scope="module")
def finished_smoke(tmp_path_factory) -> Path:
    """A folder where the smoke workflow looks finished: placeholder outputs marked done by
    snakemake's touch mode (with the metadata of the current config)."""
    workdir = tmp_path_factory.mktemp("finished_smoke")
    config = {"experiment": "smoke"}
    # twice: the snapshot jobs are planned once the trainings (a checkpoint rule) look finished
    for _ in range(2):
        for output in run_workflow(workdir, config):
            path = workdir / output
            path.parent.mkdir(parents=True, exist_ok=True)
            # a stage record must be readable (an empty one is damage, which the workflow redoes); the
            # models of snapshots.models record the kept steps 0, 10 and 50 (empty placeholder files)
            outputs = {}
            if path.name == "model.pt" and path.parts[-3] in ("mt", "lm", "mlm") and path.parent.name == "seed1":
                for step in SNAPSHOT_STEPS:
                    (path.parent / "snapshots").mkdir(exist_ok=True)
                    (path.parent / "snapshots" / f"step{step}.pt").write_text("")
                    outputs[f"snapshots/step{step}.pt"] = {"size": 0, "sha256": "", "mtime_ns": 0}
                (path.parent / "stage.json").write_text(json.dumps({"outputs": outputs}))
            if not (path.name == "stage.json" and path.exists()):
                path.write_text('{"outputs": {}}' if path.name == "stage.json" else "")
        run_workflow(workdir, config, executor="touch", forceall=True)
    return workdir


SNAPSHOT_STEPS = (0, 10, 50)  # kept by mt, lm and mlm seed 1 in the finished placeholder run
NOTHING = dict.fromkeys(RULES, 0)
DOWNSTREAM_OF_DUMPS = {"measure": 57, "merge": 7, "similarity": 1, "report": 1}
# what depends on the 8 trained models' dumps only (not on the step-0 control's)
DOWNSTREAM_OF_TRAINED = {"measure": 47, "merge": 7, "similarity": 1, "report": 1}
# the measures over training of mt, lm and mlm seed 1: 3 kept steps and the finished model each
MEASURED_EVOLUTION = {"evolution": 12, "merge_evolution": 1}
# and the dumps of their 3 kept steps
EVOLUTION = {"snapshot_dump": 9, **MEASURED_EVOLUTION}


@pytest.mark.parametrize("overrides,expected", [
    ([], NOTHING),
    # runtime settings change how a stage runs, not what it computes
    (["train.threads=3", "train.progress=false", "train.device=cpu", "dump.device=cpu"], NOTHING),
    (["analysis.device=cpu", "analysis.report.dpi=110"], NOTHING),
    # (the snapshot jobs of a retrained model are planned once it is trained: its merge reruns now)
    (["model.d_model=32"], {**NOTHING, "train": 8, "dump": 8, "dump_init": 2, **DOWNSTREAM_OF_DUMPS,
                            "merge_evolution": 1}),
    # the step-0 control is never trained: training settings leave it alone
    (["train.lr=1e-3"], {**NOTHING, "train": 8, "dump": 8, **DOWNSTREAM_OF_TRAINED, "merge_evolution": 1}),
    # the snapshots are dumped with the dump settings: 3 models x 3 kept steps, measured with the finished model
    (["dump.dtype=float32"], {**NOTHING, "dump": 8, "dump_init": 2, **DOWNSTREAM_OF_DUMPS, **EVOLUTION}),
    (["data.max_len=40"], GRID),
    (["data.tokenizer.vocab_size=900"], GRID),
    # an analysis setting reruns its measurement (and the report) only, never a model or a dump
    # (the measures over training use the similarity, MI and neighbour settings: every step's reruns)
    # (the ridge and SVCCA's kept variance are how every CCA-family distance is computed: change and
    # influence too)
    (["analysis.similarity.ridge=1e-5"], {**NOTHING, "similarity": 1, "measure": 20, "merge": 2, "report": 1,
                                          **MEASURED_EVOLUTION}),
    (["analysis.similarity.measures=[pwcca]"], {**NOTHING, "similarity": 1, "report": 1, **MEASURED_EVOLUTION}),
    (["analysis.mi.n_clusters=7"], {**NOTHING, "measure": 10, "merge": 1, "report": 1, **MEASURED_EVOLUTION}),
    (["analysis.neighbours.k=5"], {**NOTHING, "measure": 10, "merge": 1, "report": 1, **MEASURED_EVOLUTION}),
    # the examples (first seeds) find their neighbours by the neighbours metric: both measures rerun
    (["analysis.neighbours.metric=euclidean"], {**NOTHING, "measure": 16, "merge": 2, "report": 1,
                                                **MEASURED_EVOLUTION}),
    (["analysis.examples.k=3"], {**NOTHING, "measure": 6, "merge": 1, "report": 1}),
    (["analysis.buckets=[1,100,30000]"], {**NOTHING, "measure": 20, "merge": 2, "report": 1}),
    # the logit lens: the LM and MLM models' readout (lm, mlm x 2 seeds, lm_td) and every step's evolution rows
    (["analysis.readout.quantities=[loss]"], {**NOTHING, "measure": 5, "merge": 1, "report": 1, **MEASURED_EVOLUTION}),
    (["analysis.report.claims.mi_tolerance=0.1"], {**NOTHING, "report": 1}),
    # a seed more for one objective: its model and dump, the step-0 control of the new seed, the
    # measures of both, every table over models but the t-SNE pictures (first seeds only)
    (["workflow.seeds.mt=[1,2,3]"], {**NOTHING, "train": 1, "dump": 1, "dump_init": 1, "measure": 8, "merge": 4,
                                     "similarity": 1, "report": 1}),
    # the same models in another order: the first seed of mt changes, which moves the MI cluster
    # sweep (MI of both mt models), the t-SNE pictures and the examples (mt/seed2) to it; no model, dump or distance
    (["workflow.seeds.mt=[2,1]"], {**NOTHING, "measure": 4, "merge": 3, "report": 1}),
    # evolution over training: which kept steps are analysed reruns the merge and the report only (the
    # parts of the steps kept stay valid); its settings rerun every step's measure; the kept steps
    # themselves retrain the three models that keep them (their snapshot jobs are planned afterwards)
    (["snapshots.steps=[0,50]"], {**NOTHING, "merge_evolution": 1, "report": 1}),
    (["analysis.evolution.restarts=2"], {**NOTHING, **MEASURED_EVOLUTION, "report": 1}),
    (["snapshots.mlm_maskings=2"], {**NOTHING, **EVOLUTION, "report": 1}),
    (["snapshots.keep=[0,10,20,50,100,200]"], {**NOTHING, "train": 3, "dump": 3, "measure": 20, "merge": 7,
                                              "similarity": 1, "report": 1, "merge_evolution": 1}),
    # (a dict override merges into snapshots.models: a model leaves it with an empty list)
    (["snapshots.models.lm=[]", "snapshots.models.mlm=[]"], {**NOTHING, "train": 2, "dump": 2, "measure": 14, "merge": 7,
                                     "similarity": 1, "report": 1, "merge_evolution": 1}),
])
def test_changed_setting_reruns_exactly_the_affected_jobs(finished_smoke, overrides, expected):
    outputs = run_workflow(finished_smoke, {"experiment": "smoke", "overrides": overrides})
    assert jobs_per_rule(outputs) == expected


def test_setting_reruns_only_the_models_whose_config_it_changes(finished_smoke):
    # mt_td and lm_td already train with token_dropout 0.1: their hash is unchanged
    outputs = run_workflow(finished_smoke, {"experiment": "smoke", "overrides": ["objective.token_dropout=0.1"]})
    retrained = sorted(str(PurePosixPath(p).parent.relative_to("results/smoke/models"))
                       for p in outputs if p.endswith("model.pt"))
    assert retrained == ["lm/seed1", "lm/seed2", "mlm/seed1", "mlm/seed2", "mt/seed1", "mt/seed2"]
    # 6 x 4 per-model measures + t-SNE and examples of mt/seed1, lm/seed1, mlm/seed1 + the readout of the 4 LM
    # and MLM models; the step-0 control has no objective settings to change
    assert jobs_per_rule(outputs) == {**NOTHING, "train": 6, "dump": 6, "measure": 34, "merge": 7, "similarity": 1,
                                      "report": 1, "merge_evolution": 1}


# ---------------------------------------------------------------- pretrained models

# The pretrained experiment: nothing trained; bert, gpt2 and opus-mt-en-de dumped by rule hf_dump (counted
# as dumps), 6 measures on each and the readout of bert and gpt2, the 7 merged tables, the distances between them, the report.
PRETRAINED = {**dict.fromkeys(RULES, 0), "prepare": 1, "dump": 3, "measure": 20, "merge": 7, "similarity": 1,
              "report": 1}


def placeholder_run(workdir: Path, config: dict) -> Path:
    """Every output of `config`'s workflow as a placeholder (records empty), touched in the DAG's order:
    a finished run for dry runs to compare settings against."""
    for output in run_workflow(workdir, config):
        path = workdir / output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"outputs": {}}' if path.name == "stage.json" else "")
    run_workflow(workdir, config, executor="touch", forceall=True)
    return workdir


@pytest.fixture(scope="module")
def finished_pretrained(tmp_path_factory) -> Path:
    return placeholder_run(tmp_path_factory.mktemp("finished_pretrained"), {"experiment": "pretrained"})


def test_a_published_checkpoint_grid_dumps_and_measures_every_revision(tmp_path):
    """conf/experiment/pythia.yaml: two models, each the final revision's dump and 7 revisions of its grid
    as snapshots (known from the settings: nothing is trained), 8 evolution points each, the revisions'
    check; the per-model measures on both final dumps (the readout too: they are LMs)."""
    outputs = run_workflow(tmp_path, {"experiment": "pythia"})
    assert jobs_per_rule(outputs) == {**dict.fromkeys(RULES, 0), "prepare": 1, "dump": 2, "snapshot_dump": 14,
                                      "evolution": 16, "merge_evolution": 1, "revisions": 1, "measure": 14,
                                      "merge": 7, "similarity": 1, "report": 1}
    snapshots = sorted(p for p in outputs if p.endswith("stage.json") and "/snapshots/pythia-70m/" in p)
    assert snapshots == [f"results/pythia/snapshots/pythia-70m/seed0/step{s}/stage.json"
                         for s in sorted((0, 1, 8, 64, 512, 3000, 20000), key=str)]
    assert "results/pythia/metrics/evolution/pythia-160m/seed0/final.csv" in outputs


@pytest.mark.parametrize("overrides,expected", [
    # 9 log-spaced revisions instead of 8: 0, 1, 4, 32, 128, 1000, 5000, 26000 (and the final 143000) for
    # 0, 1, 8, 64, 512, 3000, 20000: the 6 new ones are dumped and measured, the others' and the final dump kept
    (["pretrained.models.pythia-70m.revisions.count=9"],
     {"snapshot_dump": 6, "evolution": 6, "dump": 0, "merge_evolution": 1, "revisions": 1}),
    # the evolution settings: every point of both grids again, nothing dumped
    (["analysis.evolution.restarts=2"], {"evolution": 16}),
])
def test_a_grid_setting_reruns_exactly_what_it_affects(tmp_path, overrides, expected):
    config = {"experiment": "pythia"}
    outputs = run_workflow(placeholder_run(tmp_path, config), {**config, "overrides": overrides})
    got = {k: v for k, v in jobs_per_rule(outputs).items() if v}
    assert {k: got.get(k, 0) for k in expected} == expected


def test_the_pretrained_experiment_dumps_three_models_and_trains_none(tmp_path):
    outputs = run_workflow(tmp_path, {"experiment": "pretrained"})
    assert jobs_per_rule(outputs) == PRETRAINED
    assert sorted(p for p in outputs if p.endswith("stage.json") and "/dumps/" in p) == [
        f"results/pretrained/dumps/{label}/seed0/stage.json" for label in ("bert", "gpt2", "opus-mt-en-de")]


@pytest.mark.parametrize("overrides,expected", [
    ([], NOTHING),
    # one model's setting: its dump, its 7 measures, every merged table, the distances, the report
    (["pretrained.models.gpt2.dtype=float32"], {**NOTHING, "dump": 1, "measure": 7, "merge": 7, "similarity": 1,
                                                "report": 1}),
    # the masked run's settings: the mlm's dump only (and what reads it)
    (["dump.mlm_maskings=2"], {**NOTHING, "dump": 1, "measure": 7, "merge": 7, "similarity": 1, "report": 1}),
    # the dump settings of every model
    (["dump.dtype=float32"], {**NOTHING, "dump": 3, "measure": 20, "merge": 7, "similarity": 1, "report": 1}),
    # what a word's state is: the distances across vocabularies only
    (["pretrained.word_state=mean"], {**NOTHING, "similarity": 1, "report": 1}),
    # a model more: its dump and measures, and everything over models
    (["+pretrained.models.roberta={name: roberta-base, role: mlm}"],
     {**NOTHING, "dump": 1, "measure": 7, "merge": 7, "similarity": 1, "report": 1}),
])
def test_a_pretrained_setting_reruns_exactly_what_it_affects(finished_pretrained, overrides, expected):
    outputs = run_workflow(finished_pretrained, {"experiment": "pretrained", "overrides": overrides})
    assert jobs_per_rule(outputs) == expected


# ---------------------------------------------------------------- the corpus and damaged outputs

@pytest.fixture
def finished_copy(finished_smoke, tmp_path) -> Path:
    """A copy of the finished smoke folder (snakemake's metadata included) that a test may alter."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_smoke, copy, symlinks=True)
    return copy


def test_an_edited_corpus_reruns_prepare_and_everything_after_it(finished_copy):
    import os
    import time

    archive = finished_copy / "resources" / "deu-eng.zip"
    archive.write_bytes(b"other content")  # snakemake compares the checksum of a small input, too
    later = time.time() + 60
    os.utime(archive, (later, later))  # newer than data/stage.json, as an edit makes it
    outputs = run_workflow(finished_copy, {"experiment": "smoke"})
    assert jobs_per_rule(outputs) == GRID and "resources/deu-eng.zip" not in outputs


DAMAGED_LM2 = {**NOTHING, "measure": 5, "merge": 5, "similarity": 1, "report": 1}  # lm/seed2: no t-SNE (not a first seed)


@pytest.mark.parametrize("folder,damaged,expected", [
    # a truncated layer file: the dump, the 5 measures of lm/seed2 (with its readout), their merges, the distances, the report
    ("dumps/lm/seed2", "layer_02.npy", {**DAMAGED_LM2, "dump": 1}),
    # a garbage model.pt: retrained, and everything after it
    ("models/lm/seed2", "model.pt", {**DAMAGED_LM2, "train": 1, "dump": 1}),
    # a record that is not one (empty): not done
    ("dumps/lm/seed2", None, {**DAMAGED_LM2, "dump": 1}),
    # a truncated probe.txt: the split is redone, and everything after it
    ("data", "probe.txt", GRID),
])
def test_a_damaged_output_reruns_its_stage_and_what_depends_on_it(finished_copy, folder, damaged, expected):
    from pipeline.records.stage import outputs_digest, write_record
    from pipeline.records.types import Output, StageRecord

    stage = finished_copy / "results/smoke" / folder
    if damaged is None:
        (stage / "stage.json").write_text("")
    else:
        (stage / damaged).write_bytes(b"garbage")
        outputs = {damaged: Output(4096, "0" * 64, 0)}
        write_record(stage / "stage.json", StageRecord(stage="x", outputs=outputs, digest=outputs_digest(outputs)))
    scheduled = run_workflow(finished_copy, {"experiment": "smoke"})
    assert jobs_per_rule(scheduled) == expected


@pytest.mark.parametrize("config,named", [
    ("overrides=seed=3", "expected a list of 'key=value' strings, got str 'seed=3'"),
    ('overrides=["train.max_steps=abc"]', "setting train.max_steps='abc' is invalid"),
    ('overrides=["seed=-1"]', "'seed=-1' sets what the workflow sets itself"),
    ("gpus=3", "config key 'gpus': 3 is greater than the maximum of 1"),
])
def test_the_command_line_gives_one_line_and_exit_code_2(tmp_path, config, named):
    import subprocess
    import sys

    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run([str(snakemake), "-n", "--cores", "1", "-s", str(SNAKEFILE), "-d", str(tmp_path),
                           "--configfile", str(CONFIGFILE), "--config", "experiment=smoke", config],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "jsonschema" not in done.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- one model on several GPUs

@pytest.mark.parametrize("train_gpus,launcher", [
    (None, "-m pipeline.train"),
    (2, "-m torch.distributed.run --standalone --nproc-per-node=2 -m pipeline.train"),
])
def test_a_train_job_with_several_gpus_starts_one_rank_per_gpu(tmp_path, train_gpus, launcher):
    import subprocess
    import sys

    extra = [] if train_gpus is None else [f"train_gpus={train_gpus}"]
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(SNAKEFILE),
                           "--directory", str(tmp_path), "--cores", "1", "--resources", "gpu=2",
                           "--configfile", str(CONFIGFILE), "--config", "experiment=smoke", *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    commands = [line for line in done.stdout.splitlines() if "pipeline.train " in line]
    assert len(commands) == 8, done.stdout[-3000:]
    assert all(f"{sys.executable} {launcher} experiment=smoke" in c for c in commands), commands[0]


# ---------------------------------------------------------------- what each job asks a cluster for

def test_every_remote_job_declares_its_resources_and_light_ones_run_locally(tmp_path):
    """A dry run of the default experiment with gpus=1: every job a cluster runs names its memory,
    minutes, CPUs (its threads) and GPUs; a training's minutes are its cap plus 30; merges and the
    report are local rules (workflow/profiles/slurm submits everything else with sbatch)."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(SNAKEFILE),
                           "--directory", str(tmp_path), "--cores", "2", "--configfile", str(CONFIGFILE),
                           "--config", "experiment=default", "gpus=1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:\n)", done.stdout):
        head = re.match(r"(?:rule|checkpoint) (\w+):", block)
        if head:
            found = re.search(r"^\s+resources: (.*)$", block, re.M)
            resources = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
            jobs.append((head.group(1), resources, wildcards and wildcards.group(1),
                         int(threads.group(1)) if threads else 1))
    with snakemake_api.SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                config_settings=ConfigSettings(config={"experiment": "default"},
                                                               configfiles=[CONFIGFILE]),
                                snakefile=SNAKEFILE, workdir=tmp_path)
        local = set(workflow._workflow._localrules)  # noqa: SLF001 (snakemake has no public accessor)
    assert local == {"all", "download", "merge", "merge_evolution", "report", "revisions"}, local  # download: the internet
    remote = [job for job in jobs if job[0] not in local]
    assert {rule for rule, *_ in remote} == {"prepare", "train", "dump", "dump_init", "measure", "similarity"}
    caps = {"mt": 40, "lm": 25, "mlm": 45, "mt_td": 40, "lm_td": 25}  # conf/experiment/default.yaml
    for rule, resources, wildcards, threads in remote:
        assert int(resources["mem_mb"]) >= 2000 and int(resources["cpus_per_task"]) == threads, (rule, resources)
        assert resources["gpu"] == ("0" if rule == "prepare" else "1"), (rule, resources)
        if rule == "train":
            objective = re.search(r"objective=(\w+)", wildcards).group(1)
            assert int(resources["runtime"]) == caps[objective] + 30, (wildcards, resources)
        else:
            assert int(resources["runtime"]) >= 30, (rule, resources)
