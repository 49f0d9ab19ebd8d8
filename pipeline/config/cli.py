"""The thin wrapper every `python -m` entry point shares: Hydra's command line, logging, one-line
errors and exit codes."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import check_experiment_name, check_seed
from pipeline.config.compose import CONFIG_DIR
from pipeline.errors import PipelineError
from pipeline.machine.faults import exit_on_machine_fault, job_errors_reported_by_hydra, reporting_machine_faults


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr, force=False)


def cli(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """Wrap `fn(cfg)` as a Hydra entry point: bad input ends with one clear line and exit code 2, and
    so does a fault of the machine (a full or read-only disk, a file that does not unpickle; Ctrl-C:
    exit code 130), with what to do; see `pipeline.machine.faults`."""
    import hydra

    @reporting_machine_faults
    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    @job_errors_reported_by_hydra
    @functools.wraps(fn)
    def main(cfg: DictConfig) -> None:
        setup_logging()
        made = _folders_made_by_hydra(cfg)
        try:
            check_experiment_name(cfg)
            check_seed(cfg)
            fn(cfg)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            _remove_if_unused(made)
            sys.exit(2)
        except BaseException as e:  # a full or read-only disk, a damaged file, Ctrl-C: the machine's, not the input's
            exit_on_machine_fault(e, lambda: _remove_if_unused(made))
            raise

    @functools.wraps(main)
    def entry() -> None:
        # Hydra names the run's log after the command (<stage>.log), not after the module stage.py.
        if not any(arg.lstrip("+").startswith("hydra.job.name=") for arg in sys.argv[1:]):
            sys.argv.append(f"hydra.job.name={job_name(fn.__module__)}")
        # Hydra makes its run folder, named after experiment_name, before `main` runs: a name given on
        # the command line is checked first, so that a refused one (../x: outside results/) makes none.
        for arg in sys.argv[1:]:
            key, eq, value = arg.partition("=")
            if eq and key.lstrip("+~") == "experiment_name":
                try:
                    check_experiment_name(OmegaConf.create({"experiment_name": value.strip("'\"")}))
                except PipelineError as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.exit(2)
        main()

    return entry


def job_name(module: str) -> str:
    """The name of a command's Hydra job: `pipeline.train.stage` -> train, `analysis.measures.change` ->
    change (the stage's folder for its stage.py, else the module)."""
    parts = module.split(".")
    return parts[-2] if parts[-1] in ("stage", "__main__") and len(parts) > 1 else parts[-1]


def _folders_made_by_hydra(cfg: DictConfig) -> list[Path]:
    """The run folder Hydra made for this run and the folders above it that hold nothing else (so it
    made them too), innermost first; never above the working directory, nor, for a run folder
    outside it, above paths.results."""
    from hydra.core.hydra_config import HydraConfig

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    except Exception:  # noqa: BLE001 - not run by Hydra
        return []
    cwd = Path.cwd().resolve()
    top = cwd if cwd in run_dir.parents else Path(str(OmegaConf.select(cfg, "paths.results") or run_dir)).resolve()
    made = [run_dir]
    for parent in run_dir.parents:
        if parent == top.parent or top not in (parent, *parent.parents) or len(list(parent.iterdir())) != 1:
            break
        made.append(parent)
    return made


def _remove_if_unused(folders: list[Path]) -> None:
    """A refused run leaves no folder behind: delete Hydra's run folder (its own files only) and the
    folders it created above it, where nothing else was put since."""
    import shutil

    logging.shutdown()  # the job's log file is in the run folder
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            continue
        if i == 0:
            if all(p.name in (".hydra",) or p.suffix == ".log" for p in folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        elif not any(folder.iterdir()):
            folder.rmdir()
