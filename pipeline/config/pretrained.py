"""The pretrained models an experiment names (`pretrained.models`), read from its settings alone.

    pretrained:
      models:
        bert: {name: bert-base-cased, role: mlm}
        gpt2: {name: gpt2}                      # role inferred from its config.json: lm

The label is the model's name everywhere downstream: its dump is `dumps/<label>/seed0/` (every
pretrained model is "seed 0": there is one of it).

A model that publishes its training checkpoints as revisions of its repository (Pythia: `step0` ..
`step143000`; OLMo: `stage1-step101000-tokens424B`) names them as a grid, measured over training like
our own models' snapshots against the model's `revision` (the final state):

        pythia: {name: EleutherAI/pythia-70m, role: lm, revision: step143000,
                 revisions: [step0, step16, step512, step4000, step32000]}   # the step from each name
        pythia: {name: EleutherAI/pythia-70m, role: lm, revisions: {family: pythia, count: 8}}
        olmo: {name: allenai/OLMo-1B-hf, role: lm, revision: main, final_step: 739000,
               revisions: {1000: stage1-step1000-tokens4B, 20000: stage1-step20000-tokens84B}}

Each revision is dumped as `snapshots/<label>/seed0/step<N>/`. A family that publishes its seeds, and its
steps, as repositories of their own (MultiBERTs) names them with `{seed}`, a revision holding a "/"
being a repository:

        multiberts: {name: google/multiberts-seed_{seed}, role: mlm, seeds: [0, 1, 2], final_step: 2000000,
                     revisions: [google/multiberts-seed_{seed}-step_20k, google/multiberts-seed_{seed}-step_200k]}

Each seed is then one model of the grid, `dumps/multiberts/seed<n>/`, as our own models' seeds are. Finding, reading and loading the files is
pipeline.model.hf's; nothing here reads a file, so the workflow reads these settings while it parses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import PipelineError

ROLES = ("mlm", "lm", "mt")


SEED = 0  # the seed every pretrained model is listed under


DTYPES = ("float32", "float16", "bfloat16")


WORD_STATES = ("first", "mean")


_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class HFSpec:
    """One pretrained model of an experiment, as its settings give it."""

    label: str
    name: str
    role: str | None = None       # None: inferred from config.json
    revision: str | None = None   # a branch, tag or commit of the hub repository (None: what is cached)
    dtype: str | None = None      # the dtype the model runs in (None: its config's torch_dtype, else float32)
    revisions: tuple[tuple[int, str], ...] = ()  # (training step, revision) of the grid, by step
    final_step: int | None = None  # the training step of `revision` (the final state the grid is measured against)
    seeds: tuple[int, ...] = (0,)  # the seeds a family publishes as repositories of their own (`{seed}` in name)

    def of(self, seed: int, step: int | None = None) -> HFSpec:
        """The one repository and revision of this model's seed `seed` (`{seed}` in its name and revisions
        filled in) at grid step `step` (None: its final `revision`). A revision holding a "/" is a repository
        of its own (MultiBERTs' google/multiberts-seed_0-step_20k), read at its default revision."""
        if seed not in self.seeds:
            raise PipelineError(f"setting seed={seed}: pretrained.models.{self.label} has the seeds "
                                f"{', '.join(map(str, self.seeds))}")
        name, revision = self.name.format(seed=seed), self.revision
        if step is not None:
            names = dict(self.revisions)
            if step not in names:
                raise PipelineError(f"setting snapshot={step}: pretrained.models.{self.label}.revisions has no step "
                                    f"{step} (its steps: {', '.join(str(s) for s, _ in self.revisions) or 'none'})")
            revision = names[step].format(seed=seed)
            if "/" in revision:
                name, revision = revision, None
        elif revision is not None:
            revision = revision.format(seed=seed)
        return HFSpec(self.label, name, self.role, revision, self.dtype)

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.revisions]

    @property
    def is_folder(self) -> bool:
        return Path(self.name).expanduser().is_dir()

    def fetch_command(self) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.name}{revision}"


def _setting(label: str, key: str) -> str:
    return f"pretrained.models.{label}.{key}"


def specs(cfg: DictConfig) -> dict[str, HFSpec]:
    """The pretrained models of `cfg` by label, checked (label, name, role, revision, dtype)."""
    models = OmegaConf.select(cfg, "pretrained.models", default=None)
    if models is None:
        return {}
    models = OmegaConf.to_container(models, resolve=True) if OmegaConf.is_config(models) else models
    if not isinstance(models, dict):
        raise PipelineError(f"setting pretrained.models={models!r}: expected a mapping label -> "
                            "{name: <hub name or folder>, role: mlm|lm|mt}")
    objectives = _objective_names()
    out = {}
    for label, entry in models.items():
        label = str(label)
        if not _LABEL.match(label):
            raise PipelineError(f"setting pretrained.models.{label}: a label is letters, digits and _ . - "
                                "(starting with a letter); it names the model's folders and table rows")
        if label in objectives:
            raise PipelineError(f"setting pretrained.models.{label}: {label!r} is an objective's name "
                                f"(conf/objective/{label}.yaml); give the pretrained model another label")
        if entry is None:
            continue  # `pretrained.models.<label>=null` drops a model an experiment names
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise PipelineError(f"setting {_setting(label, 'name')}={entry!r}: expected a hub name "
                                "(e.g. bert-base-cased) or a local folder")
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise PipelineError(f"setting pretrained.models.{label}: unknown keys {unknown} "
                                f"(known: {', '.join(_KEYS)})")
        role, dtype, revision = entry.get("role"), entry.get("dtype"), entry.get("revision")
        if role is not None and role not in ROLES:
            raise PipelineError(f"setting {_setting(label, 'role')}={role!r}: expected one of {', '.join(ROLES)} "
                                "or null (inferred from the model's config)")
        if dtype is not None and dtype not in DTYPES:
            raise PipelineError(f"setting {_setting(label, 'dtype')}={dtype!r}: expected one of "
                                f"{', '.join(DTYPES)} or null (the model's own)")
        if revision is not None and not isinstance(revision, str):
            raise PipelineError(f"setting {_setting(label, 'revision')}={revision!r}: expected a branch, "
                                "tag or commit hash")
        grid, revision, final_step = revision_grid(label, entry.get("revisions"), revision, entry.get("final_step"))
        seeds = seeds_of(label, entry)
        out[label] = HFSpec(label, str(entry["name"]), role, revision, dtype, grid, final_step, seeds)
    return out


_KEYS = ("name", "role", "revision", "dtype", "revisions", "final_step", "seeds")
_STEP = re.compile(r"(?:step|ckpt)[_-]?(\d+)(k?)(?![0-9])", re.IGNORECASE)
# The revisions a family publishes, by training step (Biderman et al. 2023, Pythia: step0, log-spaced
# steps 1 .. 512, then every 1,000 steps to 143,000, the `main` branch).
FAMILIES = {"pythia": ([0, *(2 ** i for i in range(10)), *range(1000, 143001, 1000)], "step{step}", 143000)}


def step_of(revision: str) -> int | None:
    """The training step a revision's name gives (step1000, stage1-step1000-tokens4B, ckpt_100,
    multiberts-seed_0-step_20k), or None."""
    found = _STEP.search(revision)
    return int(found.group(1)) * (1000 if found.group(2) else 1) if found else None


def family_steps(published: list[int], count: int) -> list[int]:
    """`count` of a family's published steps, log-spaced from its first step after 0 to its last, with
    step 0: the published step nearest each point of a geometric sequence (fewer where two coincide)."""
    import math

    positive = [s for s in published if s > 0]
    if count < 2 or not positive:
        return sorted(published)[:max(count, 0)]
    lo, hi = math.log(positive[0]), math.log(positive[-1])
    points = [math.exp(lo + (hi - lo) * i / (count - 2)) if count > 2 else positive[-1] for i in range(count - 1)]
    chosen = {min(positive, key=lambda s, p=p: abs(math.log(s) - math.log(p))) for p in points}
    return sorted({0, *chosen} if 0 in published else chosen)


def seeds_of(label: str, entry: dict) -> tuple[int, ...]:
    """The seeds of `pretrained.models.<label>.seeds` (default: the one seed 0), each a repository of its
    own named by `{seed}` in the model's name (MultiBERTs: google/multiberts-seed_{seed})."""
    value = entry.get("seeds")
    if value is None:
        return (SEED,)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                           for v in value) or len(set(value)) != len(value):
        raise PipelineError(f"setting {_setting(label, 'seeds')}={value!r}: expected a list of distinct seeds >= 0")
    if "{seed}" not in str(entry["name"]):
        raise PipelineError(f"setting {_setting(label, 'seeds')}={value!r}: the name {entry['name']!r} has no {{seed}} "
                            "to tell the seeds' repositories apart (e.g. google/multiberts-seed_{seed})")
    return tuple(value)


def revision_grid(label: str, value, revision: str | None, final_step) -> tuple[tuple, str | None, int | None]:
    """((step, revision) of every grid point by step, the final revision, its step) from the settings
    `revisions` (a list of names, a mapping step -> name, or {family, count}), `revision` and `final_step`."""
    key = _setting(label, "revisions")
    if value is None:
        return (), revision, None if final_step is None else int(final_step)
    if isinstance(value, dict) and "family" in value:
        family = value.get("family")
        if family not in FAMILIES:
            raise PipelineError(f"setting {key}.family={family!r}: known families: {', '.join(FAMILIES)}")
        count = value.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise PipelineError(f"setting {key}.count={count!r}: expected how many revisions, a positive integer")
        published, pattern, last = FAMILIES[family]
        revision = revision or pattern.format(step=last)
        pairs = [(s, pattern.format(step=s)) for s in family_steps(published, count)]
    elif isinstance(value, dict):
        pairs = []
        for step, name in value.items():
            if not isinstance(name, str) or not str(step).isdigit():
                raise PipelineError(f"setting {key}: {step!r}: {name!r}: expected training step -> revision name")
            pairs.append((int(step), name))
    elif isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        pairs = []
        for name in value:
            step = step_of(name)
            if step is None:
                raise PipelineError(f"setting {key}: cannot tell the training step of revision {name!r} from its "
                                    "name: give the revisions as a mapping step -> revision")
            pairs.append((step, name))
    else:
        raise PipelineError(f"setting {key}={value!r}: expected a list of revision names (step1000, ..), a mapping "
                            "training step -> revision, or {family: pythia, count: N}")
    steps = [s for s, _ in pairs]
    if len(set(steps)) != len(steps):
        raise PipelineError(f"setting {key}: two revisions at one step ({sorted(steps)})")
    if revision is None and final_step is None:
        raise PipelineError(f"setting {_setting(label, 'revision')} is null: with {key} it must name the final "
                            "revision the grid is measured against (e.g. step143000), or final_step give the step "
                            "of the repository's default revision")
    final = step_of(revision) if final_step is None else final_step
    if not isinstance(final, int) or isinstance(final, bool) or final < 0:
        raise PipelineError(f"setting {_setting(label, 'final_step')}={final_step!r}: the training step of revision "
                            f"{revision!r} (its name does not say it) must be set, an integer >= 0")
    pairs = [(s, name) for s, name in sorted(pairs) if name != revision]  # the final is the model's own dump
    return tuple(pairs), revision, final


def _objective_names() -> set[str]:
    from pipeline.config.compose import CONFIG_DIR

    return {p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")}


def spec_of(cfg: DictConfig, label: str) -> HFSpec:
    models = specs(cfg)
    if label not in models:
        raise PipelineError(f"{label!r} is not a pretrained model of experiment {cfg.experiment_name} "
                            f"(pretrained.models: {', '.join(models) or 'none'})")
    return models[label]


def word_state(cfg: DictConfig) -> str:
    value = OmegaConf.select(cfg, "pretrained.word_state", default="first")
    if value not in WORD_STATES:
        raise PipelineError(f"setting pretrained.word_state={value!r}: expected first or mean")
    return str(value)


