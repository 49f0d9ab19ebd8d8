"""Command line: `python -m pipeline.prepare.fetch [hydra overrides]` puts the corpus archive in place: it
downloads data.url to data.resources_dir when it is not there yet and checks the zip (the workflow's
rule download; `pipeline.prepare` does the same by itself when run by hand)."""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from pipeline.config.checks import check_data_settings
from pipeline.config.cli import cli
from pipeline.prepare.corpus import locate_archive

log = logging.getLogger("pipeline.fetch")


def run(cfg: DictConfig) -> None:
    check_data_settings(cfg)
    if cfg.data.format != "archive":
        log.info("data.format=%s: no archive to fetch", cfg.data.format)
        return
    log.info("archive in place: %s", locate_archive(cfg))


main = cli(run)

if __name__ == "__main__":
    main()
