"""Published checkpoint grids (pretrained.models.<label>.revisions): the settings, each revision dumped as a
snapshot from a local Hugging Face cache and measured over training against the final one, revisions that
are the same as another flagged, and the cache kept bounded (pretrained.evict). Tiny random GPT-NeoX
(Pythia's architecture) models saved as branches of one repository in a cache laid out as the hub's
(tests/hf_cache.py); no network."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.config.pretrained import FAMILIES, family_steps, revision_grid, step_of
from pipeline.errors import PipelineError

transformers = pytest.importorskip("transformers")

REPO = "tiny-org/pythia-tiny"
# branch -> the seed of its random weights; step20 is step10's weights again (as Pythia's step branches
# that equal another), step30 the final revision
BRANCHES = {"step0": 0, "step10": 1, "step20": 1, "step30": 2}


# ---------------------------------------------------------------- the settings

def test_the_step_of_a_revision_comes_from_its_name():
    assert step_of("step1000") == 1000 and step_of("stage1-step101000-tokens424B") == 101000
    assert step_of("ckpt_100") == 100 and step_of("main") is None


def test_a_family_gives_log_spaced_published_steps_with_step0():
    published = FAMILIES["pythia"][0]
    assert len(published) == 154
    steps = family_steps(published, 8)
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 143000 and len(steps) == 8
    assert set(steps) <= set(published)
    ratios = np.diff(np.log(steps[1:]))
    assert ratios.max() < 2.5 * ratios.min()  # roughly even on a log axis


@pytest.mark.parametrize("value,revision,final_step,grid,final", [
    (["step0", "step512", "step2000"], "step143000", None, ((0, "step0"), (512, "step512"), (2000, "step2000")),
     ("step143000", 143000)),
    ({100: "stage1-a", 5: "stage1-b"}, "main", 900, ((5, "stage1-b"), (100, "stage1-a")), ("main", 900)),
    # the final revision is the model's own dump, not a grid point
    (["step0", "step143000"], "step143000", None, ((0, "step0"),), ("step143000", 143000)),
    ({"family": "pythia", "count": 3}, None, None, ((0, "step0"), (1, "step1")), ("step143000", 143000)),
])
def test_revision_grids_from_names_mappings_and_families(value, revision, final_step, grid, final):
    assert revision_grid("p", value, revision, final_step) == (grid, *final)


@pytest.mark.parametrize("value,revision,final_step,named", [
    (["main"], "step10", None, "cannot tell the training step of revision 'main'"),
    (["step1", "step1"], "step10", None, "two revisions at one step"),
    (["step1"], None, None, "pretrained.models.p.revision is null"),
    (["step1"], "main", None, "pretrained.models.p.final_step=None"),
    ({"family": "olmo", "count": 3}, None, None, "known families: pythia"),
    ({"family": "pythia", "count": 0}, None, None, "revisions.count=0"),
    ("step1", "step10", None, "expected a list of revision names"),
])
def test_a_bad_revision_setting_names_the_setting(value, revision, final_step, named):
    with pytest.raises(PipelineError, match=named.replace("(", r"\(").replace(")", r"\)")):
        revision_grid("p", value, revision, final_step)


# ---------------------------------------------------------------- a grid from a local cache

@pytest.fixture(scope="module")
def grid(tmp_path_factory, shared_zip):
    """The smoke split with 40 probe sentences; the four branches in a local hub cache; every revision
    dumped (float32) and measured over training, and the revisions' check."""
    import huggingface_hub.constants

    from analysis.measures.evolution import run as evolution
    from analysis.measures.revisions import run as revisions
    from pipeline.config.compose import compose
    from pipeline.dump import pretrained as hf_dump
    from pipeline.prepare.corpus import read_lines
    from pipeline.prepare.stage import run as prepare
    from tests.hf_cache import add_revision
    from tests.hf_models import build
    from tests.synthetic import replace_output

    root = tmp_path_factory.mktemp("revisions")
    base = ["experiment=smoke", f"paths.results={root / 'results'}", f"data.archive={shared_zip}",
            "train.progress=false", "dump.dtype=float32", "workflow.objectives=[]", "workflow.init=false",
            "analysis.evolution.max_tokens=null", "analysis.min_samples_per_dim=1",
            f"+pretrained.models.tiny={{name: {REPO}, role: lm, revision: step30, revisions: [step0, step10, step20]}}"]
    prepare(compose(base))
    probe = root / "results" / "data" / "probe.txt"
    replace_output(probe, "".join(f"{line}\n" for line in read_lines(probe)[:40]))
    sentences = read_lines(root / "results" / "data" / "train.src")
    cache = root / "hub"
    for branch, seed in BRANCHES.items():
        build("neox", root / "saved" / branch, sentences, seed=seed)
        add_revision(cache, REPO, branch, root / "saved" / branch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")

        def cfg(*extra):
            return compose([*base, "objective=lm", "label=tiny", "seed=0", *extra])

        hf_dump.dump(cfg())
        parts = [evolution(cfg())]
        for step in (0, 10, 20):
            hf_dump.dump(cfg(f"snapshot={step}"))
            parts.append(evolution(cfg(f"snapshot={step}")))
        table = revisions(cfg())
    from analysis.io.tables import read_table
    from analysis.measures.merge import main as merge

    merged = root / "results" / "metrics" / "evolution.csv"
    assert merge(["evolution", str(merged), *map(str, parts)]) == 0
    from analysis.report.gather import load_table

    return {"root": root, "cache": cache, "cfg": cfg, "rows": load_table(merged, "evolution").rows,
            "revisions": read_table(table, "revisions"), "base": base}


def test_each_revision_is_dumped_as_a_snapshot_of_its_own_commit(grid):
    from pipeline.records.files import read_json

    snapshots = grid["root"] / "results" / "snapshots" / "tiny" / "seed0"
    commits = {}
    for step in (0, 10, 20):
        meta = read_json(snapshots / f"step{step}" / "meta.json")
        assert meta["step"] == step and meta["objective"] == "tiny"
        assert meta["pretrained"]["requested_revision"] == f"step{step}"
        commits[step] = meta["pretrained"]["revision"]
    final = read_json(grid["root"] / "results" / "dumps" / "tiny" / "seed0" / "meta.json")
    assert final["step"] == 30 and final["pretrained"]["requested_revision"] == "step30"
    assert len({*commits.values(), final["pretrained"]["revision"]}) == 4


def test_the_grid_is_measured_against_the_final_revision(grid):
    rows = grid["rows"]
    assert {r["step"] for r in rows} == {0, 10, 20, 30}
    to_final = [r for r in rows if r["quantity"] == "to_final" and r["measure"] == "cka"]
    at = {(r["step"], r["final"], r["layer"]): float(r["value"]) for r in to_final}
    layers = sorted({r["layer"] for r in to_final})
    assert all(abs(at[(30, 1, layer)]) < 1e-6 for layer in layers)
    assert all(at[(0, 0, layer)] > 0.01 for layer in layers[1:])
    # step 20 is step 10's weights: every measured value is the same at both steps
    for quantity in ("to_final", "mi", "readout", "neighbours"):
        ten = sorted((r["measure"], r["target"], r["layer"], r["value"]) for r in rows
                     if r["step"] == 10 and r["quantity"] == quantity)
        twenty = sorted((r["measure"], r["target"], r["layer"], r["value"]) for r in rows
                        if r["step"] == 20 and r["quantity"] == quantity)
        assert ten and ten == twenty, quantity
    readout = [r for r in rows if r["quantity"] == "readout" and r["measure"] == "kl"]
    assert all(abs(r["value"]) < 1e-6 for r in readout if r["final"] and r["layer"] == layers[-1])


def test_revisions_that_equal_another_are_flagged_naming_both(grid):
    rows = {r["revision"]: r for r in grid["revisions"]}
    assert set(rows) == {"step0", "step10", "step20", "step30"}
    assert rows["step10"]["same_weights_as"] == "step20" and rows["step20"]["same_weights_as"] == "step10"
    assert rows["step10"]["same_states_as"] == "step20" and rows["step20"]["same_states_as"] == "step10"
    assert rows["step0"]["same_weights_as"] == rows["step30"]["same_states_as"] == ""
    assert rows["step10"]["commit"] != rows["step20"]["commit"]  # two branches, one set of weights
    assert int(rows["step30"]["final"]) == 1


def test_evict_removes_only_what_this_run_fetched_and_the_dump_stays_done(grid, monkeypatch):
    """A revision fetched by the run (a simulated download: copied into the cache) is removed from the
    cache once its dump is written, with the weights' sha256 in the record; a rerun has nothing to do."""
    import huggingface_hub.constants

    from pipeline.dump import pretrained as hf_dump
    from pipeline.model import hf
    from pipeline.records.stage import read_record
    from tests.hf_cache import add_revision, repo_folder

    cache = grid["root"] / "hub-evict"
    shutil.copytree(grid["cache"], cache, symlinks=True)
    fetched = []

    def download(spec):
        assert spec.revision == "step40"
        fetched.append(spec.revision)
        add_revision(cache, REPO, "step40", grid["root"] / "saved" / "step0")
        return repo_folder(cache, REPO) / "snapshots" / (repo_folder(cache, REPO) / "refs" / "step40").read_text()

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "_download", download)
    before = {p.name for p in (repo_folder(cache, REPO) / "snapshots").iterdir()}
    extra = ["pretrained.download=true", "pretrained.evict=true", f"paths.results={grid['root'] / 'evicted'}",
             "pretrained.models.tiny.revisions=[step0,step40]"]
    shutil.copytree(grid["root"] / "results" / "data", grid["root"] / "evicted" / "data")
    cfg = grid["cfg"](*extra)
    for step in (0, 40):
        out = hf_dump.dump(grid["cfg"](*extra, f"snapshot={step}"))
        record = read_record(out)
        assert record.extra["evicted"] is (step == 40)
        assert [w["sha256"] for w in record.extra["pretrained"]["weights"]]
        assert all("hub-evict" not in key for key in record.inputs) or step == 0
    assert fetched == ["step40"]
    after = {p.name for p in (repo_folder(cache, REPO) / "snapshots").iterdir()}
    assert after == before, "the fetched revision is gone, the ones the user had are kept"
    assert (repo_folder(cache, REPO) / "refs" / "step0").is_file()
    hf_dump.dump(grid["cfg"](*extra, "snapshot=40"))  # done: nothing to fetch
    assert fetched == ["step40"]
    assert cfg.pretrained.evict is True


# ---------------------------------------------------------------- seeds and steps as repositories (MultiBERTs)

def test_seeds_and_steps_published_as_repositories_of_their_own():
    from pipeline.config.pretrained import seeds_of

    grid, revision, final = revision_grid("mb", ["google/multiberts-seed_{seed}-step_20k",
                                                 "google/multiberts-seed_{seed}-step_200k"], None, 2000000)
    assert grid == ((20000, "google/multiberts-seed_{seed}-step_20k"), (200000, "google/multiberts-seed_{seed}-step_200k"))
    assert revision is None and final == 2000000
    entry = {"name": "google/multiberts-seed_{seed}", "seeds": [0, 3]}
    assert seeds_of("mb", entry) == (0, 3) and seeds_of("mb", {"name": "x"}) == (0,)
    with pytest.raises(PipelineError, match="has no {seed}"):
        seeds_of("mb", {"name": "google/multiberts", "seeds": [0, 1]})
    with pytest.raises(PipelineError, match="distinct seeds"):
        seeds_of("mb", {"name": "a-{seed}", "seeds": [1, 1]})


def test_a_seed_and_a_step_name_their_repository_and_revision():
    from pipeline.config.pretrained import HFSpec

    spec = HFSpec("mb", "org/mb-seed_{seed}", "mlm", None, None,
                  ((20000, "org/mb-seed_{seed}-step_20k"), (5, "branch-{seed}")), 2000000, (0, 3))
    assert (spec.of(3).name, spec.of(3).revision) == ("org/mb-seed_3", None)
    assert (spec.of(3, 20000).name, spec.of(3, 20000).revision) == ("org/mb-seed_3-step_20k", None)
    assert (spec.of(0, 5).name, spec.of(0, 5).revision) == ("org/mb-seed_0", "branch-0")
    with pytest.raises(PipelineError, match="seed=1"):
        spec.of(1)
    with pytest.raises(PipelineError, match="no step 7"):
        spec.of(0, 7)


def test_each_seed_repository_is_a_model_of_the_grid(grid):
    """Two seeds as repositories of their own (the second one's weights differ), one step of each as a
    repository too: each seed is dumped from its own repository, its step from the step's."""
    import huggingface_hub.constants

    from pipeline.dump import pretrained as hf_dump
    from pipeline.records.files import read_json
    from tests.hf_cache import add_revision

    cache = grid["root"] / "hub-seeds"
    for seed, (final, step) in enumerate((("step30", "step0"), ("step10", "step30"))):
        add_revision(cache, f"tiny-org/mb-seed_{seed}", "main", grid["root"] / "saved" / final)
        add_revision(cache, f"tiny-org/mb-seed_{seed}-step_1k", "main", grid["root"] / "saved" / step)
    entry = ("+pretrained.models.mb={name: 'tiny-org/mb-seed_{seed}', role: lm, seeds: [0, 1], final_step: 30000, "
             "revisions: ['tiny-org/mb-seed_{seed}-step_1k']}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        metas = {}
        for seed in (0, 1):
            for step in (None, 1000):
                extra = [entry, "label=mb", f"seed={seed}", *([] if step is None else [f"snapshot={step}"])]
                out = hf_dump.dump(grid["cfg"](*extra))
                metas[seed, step] = read_json(out / "meta.json")
        from analysis.measures.revisions import revision_rows

        checked = [r for r in revision_rows(grid["cfg"](entry, "label=mb")) if r["objective"] == "mb"]
    # a step that is a repository of its own is named by it; each seed's revisions are compared among themselves
    assert sorted((r["seed"], r["revision"], r["final"]) for r in checked) == [
        (0, "tiny-org/mb-seed_0", 1), (0, "tiny-org/mb-seed_0-step_1k", 0),
        (1, "tiny-org/mb-seed_1", 1), (1, "tiny-org/mb-seed_1-step_1k", 0)]
    assert all(r["same_weights_as"] == "" for r in checked)
    assert metas[1, None]["seed"] == 1 and metas[1, None]["pretrained"]["name"] == "tiny-org/mb-seed_1"
    assert metas[1, 1000]["pretrained"]["name"] == "tiny-org/mb-seed_1-step_1k" and metas[1, 1000]["step"] == 1000
    assert metas[0, None]["step"] == 30000
    assert metas[0, None]["checkpoint_sha256"] != metas[1, None]["checkpoint_sha256"]
    # the files each came from: seed 1's repository holds saved/step10, seed 0's step repository saved/step0
    results = grid["root"] / "results"
    assert metas[1, None]["checkpoint_sha256"] == \
        read_json(results / "snapshots" / "tiny" / "seed0" / "step10" / "meta.json")["checkpoint_sha256"]
    assert metas[0, 1000]["checkpoint_sha256"] == \
        read_json(results / "snapshots" / "tiny" / "seed0" / "step0" / "meta.json")["checkpoint_sha256"]
    assert (results / "dumps" / "mb" / "seed1" / "stage.json").is_file()
    assert (results / "snapshots" / "mb" / "seed1" / "step1000" / "stage.json").is_file()


def test_a_masked_lm_grid_measures_every_revision_on_the_first_maskings(grid):
    """A BERT grid (step0 and the final step5 in the cache): the revision's masked run has
    snapshots.mlm_maskings maskings, the final dump dump.mlm_maskings; the evolution rows of both (MI with
    the masked token, the readout) are on the same masked rows."""
    import huggingface_hub.constants

    from analysis.measures.evolution import evolution_rows
    from pipeline.dump import pretrained as hf_dump
    from pipeline.prepare.corpus import read_lines
    from pipeline.records.files import read_json
    from tests.hf_cache import add_revision
    from tests.hf_models import build

    cache, saved = grid["root"] / "hub-bert", grid["root"] / "saved-bert"
    sentences = read_lines(grid["root"] / "results" / "data" / "train.src")
    for seed, branch in enumerate(("step0", "step5")):
        build("bert", saved / branch, sentences, seed=seed)
        if seed:  # a release's revisions share one tokenizer (each build trains its own; their ids differed)
            for path in (saved / "step0").iterdir():
                if "token" in path.name or path.name == "vocab.txt":
                    shutil.copyfile(path, saved / branch / path.name)
        add_revision(cache, "tiny-org/bert-tiny", branch, saved / branch)
    entry = "+pretrained.models.bt={name: tiny-org/bert-tiny, role: mlm, revision: step5, revisions: [step0]}"

    def cfg(*extra):
        return grid["cfg"](entry, "objective=mlm", "label=bt", "dump.mlm_maskings=2", "snapshots.mlm_maskings=1", *extra)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        final, snap = hf_dump.dump(cfg()), hf_dump.dump(cfg("snapshot=0"))
        rows = evolution_rows(cfg("snapshot=0")) + evolution_rows(cfg())
    assert read_json(final / "masked" / "meta.json")["maskings"] == 2
    assert read_json(snap / "masked" / "meta.json")["maskings"] == 1
    for quantity, target in (("readout", "masked"), ("mi", "output")):
        mine = [r for r in rows if r["quantity"] == quantity and r["target"] == target]
        assert {r["step"] for r in mine} == {0, 5} and len({r["n_tokens"] for r in mine}) == 1, quantity
