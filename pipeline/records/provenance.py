"""Where a stage's outputs came from: the package versions, the git commit, and the command that remakes them."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        commit = out.stdout.strip()
        return commit if out.returncode == 0 and len(commit) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and the libraries a result depends on."""
    found: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "numpy", "sentencepiece", "sacrebleu", "hydra", "omegaconf", "snakemake",
                 "sklearn", "scipy"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        found[name] = getattr(mod, "__version__", None)
    for name in ("transformers", "tokenizers", "safetensors", "huggingface_hub"):  # only where a stage used them:
        if name in sys.modules:                                                   # importing costs seconds
            found[name] = getattr(sys.modules[name], "__version__", None)
    found["git_commit"] = git_commit()
    return found


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra app (hydra.* left out); None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    except Exception:  # noqa: BLE001 - no Hydra app: no command line to repeat
        pass
    return None


def stage_command(module: str, drop: Sequence[str] = (), add: Sequence[str] = ()) -> str:
    """The command that (re)makes a stage: `python -m <module>` with this run's overrides, less those
    of the keys in `drop`, plus `add`."""
    import shlex

    overrides = hydra_overrides()
    if overrides is None:
        return " ".join(["python -m", module, "<the same overrides>", *add])
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in drop]
    return " ".join(["python -m", module, *map(shlex.quote, [*kept, *add])])


# Overrides that name which model or run a command is about, not how it is made: a command rebased on
# another stage's keeps its own.
_IDENTITY = ("experiment", "experiment_name", "objective", "objective.name", "label", "seed", "snapshot")


def rebased_command(own: str | None, source: str | None, source_config: Any) -> str | None:
    """`own` (a stage's `python -m <module> <overrides>`) with the settings of `source_config` (the
    settings a stage it reads was made with) taken from `source` (that stage's command): own's
    override of such a setting is dropped and source's added; identity keys (objective, seed, ..) and
    paths stay own's. The command that remakes a stage from its input as the input is now, or None
    when a command is not a repeatable command line."""
    import shlex

    try:
        mine, theirs = shlex.split(own or ""), shlex.split(source or "")
    except ValueError:
        return None
    if mine[:2] != ["python", "-m"] or theirs[:2] != ["python", "-m"] or "<the same overrides>" in f"{own} {source}":
        return None
    held = set(_flatten(json.loads(json.dumps(source_config or {}, default=str))))
    key = lambda o: o.lstrip("+~").split("=", 1)[0]  # noqa: E731
    fixed = lambda k: k in _IDENTITY or k.startswith(("paths.", "hydra.", "hydra/"))  # noqa: E731
    belongs = lambda k: not fixed(k) and (k in held or any(h.startswith(k + ".") for h in held))  # noqa: E731
    words = [*mine[:3], *(o for o in mine[3:] if not belongs(key(o))), *(o for o in theirs[3:] if belongs(key(o)))]
    return " ".join(words[:3] + [shlex.quote(w) for w in words[3:]])


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: obj}
