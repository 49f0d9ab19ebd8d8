"""Command line: `python -m pipeline.prepare [hydra overrides]` splits the corpus into
cfg.paths.data and trains the tokenizer into cfg.paths.tokenizer (each step skipped when current).

Example: python -m pipeline.prepare experiment=smoke data.archive=/path/to/deu-eng.zip
"""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline.config.cli import cli
from pipeline.prepare.corpus import prepare_data
from pipeline.prepare.tokenizer import train_tokenizer


def run(cfg: DictConfig) -> None:
    """Make the data split, then the tokenizer that is trained on it."""
    prepare_data(cfg)
    train_tokenizer(cfg)


main = cli(run)

if __name__ == "__main__":
    main()
