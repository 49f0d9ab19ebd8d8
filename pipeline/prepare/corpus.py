"""The parallel corpus: finding and reading it, checking it, and splitting it into the files every
later stage reads (`train/valid/test.{src,tgt}`, `train/valid.mono`, `probe.txt`).

English is the source side. One English sentence often has several German translations, so the
split is made over distinct source sentences: no source sentence is ever in two splits.
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from omegaconf import DictConfig

from pipeline.config.checks import require
from pipeline.config.stages import data_config
from pipeline.errors import PipelineError
from pipeline.records.files import STAGE_RECORD, atomic_path, recording, sha256_file, write_text
from pipeline.records.locks import one_writer
from pipeline.records.provenance import stage_command
from pipeline.records.stage import checked_file, stage_problem, write_stage_record

log = logging.getLogger("pipeline.corpus")

Pair = tuple[str, str]

SPLITS = ("train", "valid", "test")
OUTPUT_FILES = (*(f"{s}.{side}" for s in SPLITS for side in ("src", "tgt")),
                "train.mono", "valid.mono", "probe.txt")
DEFAULT_ARCHIVE_NAME = "deu-eng.zip"
_USER_AGENT = "bottom-up-evolution/0.1 (research reproduction; python urllib)"
_DOWNLOAD_TIMEOUT_S = 60
# The max_pairs subsample draws from its own stream so it is not correlated with the split shuffle.
_SUBSAMPLE_STREAM = 1


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# Control characters (C0 but tab, LF and CR; DEL; C1) have no place in a sentence: a NUL or an escape
# sequence is a damaged or binary file, not text, and would reach the tokenizer unnoticed.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_controls(lines: list[str], label: str) -> None:
    """Fail at the first line holding a control character, naming the line, column and code point."""
    for number, line in enumerate(lines, start=1):
        found = _CONTROL.search(line)
        if found:
            raise PipelineError(f"{label}, line {number}, column {found.start() + 1}: control character "
                                f"U+{ord(found.group()):04X} in a sentence (a binary or damaged file?)")


# Invisible characters that make one sentence two (a copy with a zero-width space lands in another
# split, and the tokenizer learns the character as a piece): zero-width space, non-joiner and joiner,
# word joiner, and the byte-order mark met inside a text (U+FEFF, zero-width no-break space).
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def normalise(text: str) -> str:
    """One sentence as every later stage sees it, whatever the corpus format: zero-width characters
    and byte-order marks removed, then Unicode NFC (no case folding, no compatibility mapping), then
    every run of (Unicode) whitespace collapsed to one space and the ends stripped.

    Removing comes first, so that a mark that a zero-width character kept apart from its letter is
    composed with it too.
    """
    text = unicodedata.normalize("NFC", _ZERO_WIDTH.sub("", text))
    return " ".join(text.split())


def _decoded_lines(data: bytes, label: str) -> list[str]:
    """Split raw bytes on LF and decode each line, failing at the first line that is not UTF-8.

    Splitting the bytes (not the decoded text) keeps line numbers those of a text editor: Python's
    `splitlines` would also break at U+2028, form feeds and the like.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark belongs to the file, not to its first sentence
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise PipelineError(f"{label}, line {number}: not valid UTF-8 ({e.reason} at byte "
                                f"{e.start})") from None
    if _CONTROL.search("\n".join(lines)):  # one pass over the whole text; find the line only on a hit
        _check_controls(lines, label)
    return lines


def _check_zip(path: Path, what: str) -> None:
    """Fail unless `path` is a readable zip archive whose members pass their CRC checks."""
    if not zipfile.is_zipfile(path):
        raise PipelineError(f"{what} {path} is not a zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise PipelineError(f"{what} {path} is not a valid zip archive ({e})") from None
    if bad is not None:
        raise PipelineError(f"{what} {path} is corrupt: member {bad} fails its CRC check")


def read_archive(path: str | os.PathLike, member: str) -> list[Pair]:
    """Read `member` of a zip archive: `src<TAB>tgt` or `src<TAB>tgt<TAB>attribution` per line."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"archive {path} not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                raise PipelineError(f"archive {path} has no member {member!r} (data.member); it "
                                    f"holds {', '.join(names) or 'nothing'}")
            data = zf.read(member)
    except (zipfile.BadZipFile, OSError) as e:
        raise PipelineError(f"archive {path} is not a valid zip archive ({e})") from None
    label = f"{path}!{member}"
    pairs = []
    for number, line in enumerate(_decoded_lines(data, label), start=1):
        columns = line.split("\t")
        if len(columns) not in (2, 3):
            raise PipelineError(f"{label}, line {number}: expected 2 or 3 tab-separated columns "
                                f"(source, target[, attribution]), found {len(columns)}")
        src, tgt = normalise(columns[0]), normalise(columns[1])
        for side, text in (("source", src), ("target", tgt)):
            if not text:
                raise PipelineError(f"{label}, line {number}: empty {side} sentence (once whitespace and "
                                    "zero-width characters are removed)")
        pairs.append((src, tgt))
    return pairs


def _read_side(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise PipelineError(f"{key}: file {path} not found")
    lines = [normalise(line) for line in _decoded_lines(path.read_bytes(), str(path))]
    for number, line in enumerate(lines, start=1):
        if not line:
            raise PipelineError(f"{path}, line {number}: empty sentence (once whitespace and zero-width "
                                "characters are removed)")
    return lines


def read_parallel(src_file: str | os.PathLike, tgt_file: str | os.PathLike) -> list[Pair]:
    """Read two line-aligned text files, one sentence per line (data.src_file, data.tgt_file)."""
    src_path, tgt_path = Path(src_file), Path(tgt_file)
    src = _read_side(src_path, "data.src_file")
    tgt = _read_side(tgt_path, "data.tgt_file")
    if len(src) != len(tgt):
        raise PipelineError(f"line counts differ: data.src_file {src_path} has {len(src)} lines "
                            f"but data.tgt_file {tgt_path} has {len(tgt)}")
    return list(zip(src, tgt))


def _download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest`; only a complete, valid zip is ever renamed into place."""
    log.info("downloading %s to %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response, \
                    open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            _check_zip(tmp, f"the download of {url}")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise PipelineError(f"could not download {url} ({e}); download it by hand and set "
                            f"data.archive=/path/to/{dest.name} (or put it at {dest})") from None
    except PipelineError as e:
        raise PipelineError(f"{e}; download it by hand and set data.archive=/path/to/{dest.name} "
                            f"(or put it at {dest})") from None


def locate_archive(cfg: DictConfig) -> Path:
    """The archive to read: data.archive if set, else <data.resources_dir>/<name>, downloading
    data.url there when it is not there yet."""
    if cfg.data.archive:
        path = Path(str(cfg.data.archive)).expanduser()
        if not path.is_file():
            raise PipelineError(f"data.archive: file {path} not found")
        _check_zip(path, "data.archive")
        return path
    url = require(cfg, "data.url", lambda v: isinstance(v, str) and bool(v), "must be a URL")
    name = Path(urllib.parse.urlparse(url).path).name or DEFAULT_ARCHIVE_NAME
    path = Path(str(cfg.data.resources_dir)).expanduser() / name
    if not path.is_file():
        _download(url, path)  # checks the zip before it lands at `path`
        return path
    try:
        _check_zip(path, "archive")
    except PipelineError as e:
        raise PipelineError(f"{e}; delete it to download it again, or set data.archive") from None
    return path


def read_corpus(cfg: DictConfig) -> tuple[list[Pair], dict[str, str]]:
    """All pairs named by the config, with the sha256 of each input file read (path -> sha256)."""
    fmt = require(cfg, "data.format", lambda v: v in ("archive", "parallel"),
                  "must be 'archive' or 'parallel'")
    if fmt == "archive":
        member = require(cfg, "data.member", lambda v: isinstance(v, str) and bool(v),
                         "must name the file inside the archive")
        path = locate_archive(cfg)
        return read_archive(path, member), {str(path): sha256_file(path)}
    for key in ("data.src_file", "data.tgt_file"):
        require(cfg, key, lambda v: isinstance(v, str) and bool(v),
                "must be set when data.format=parallel")
    src, tgt = Path(str(cfg.data.src_file)), Path(str(cfg.data.tgt_file))
    pairs = read_parallel(src, tgt)
    return pairs, {str(src): sha256_file(src), str(tgt): sha256_file(tgt)}


def distinct_sources(pairs: Iterable[Pair]) -> list[str]:
    """Source sentences without repeats, in order of first appearance."""
    return list(dict.fromkeys(src for src, _ in pairs))


def subsample_sources(pairs: Sequence[Pair], max_sources: int, seed: int) -> list[Pair]:
    """Keep a random `max_sources` distinct source sentences with all their pairs (corpus order)."""
    sources = distinct_sources(pairs)
    if max_sources >= len(sources):
        return list(pairs)
    rng = np.random.default_rng([_SUBSAMPLE_STREAM, seed])
    kept = {sources[i] for i in rng.choice(len(sources), size=max_sources, replace=False)}
    return [pair for pair in pairs if pair[0] in kept]


@dataclass(frozen=True)
class Split:
    """Pairs per split, grouped by source sentence in shuffled order; `probe` holds its sentences'
    pairs too, but only their distinct sources are written out."""

    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    probe: list[Pair]

    @property
    def probe_sentences(self) -> list[str]:
        return distinct_sources(self.probe)


def split_pairs(pairs: Sequence[Pair], valid_size: int, test_size: int, probe_size: int,
                seed: int) -> Split:
    """Assign distinct source sentences at random to probe, valid, test (these many each) and train
    (the rest); each pair follows its source sentence.

    Pairs come out grouped by source in the shuffled order, so the first N of any split are a
    random sample even though the corpus file is sorted by length.
    """
    for key, size in (("data.valid_size", valid_size), ("data.test_size", test_size),
                      ("data.probe_size", probe_size)):
        if not _is_int(size) or size < 1:
            raise PipelineError(f"setting {key}={size!r} is invalid: must be a positive integer")
    by_source: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_source.setdefault(pair[0], []).append(pair)
    sources = list(by_source)
    held_out = probe_size + valid_size + test_size
    if len(sources) <= held_out:
        raise PipelineError(
            f"the corpus has {len(sources)} distinct source sentences, too few for "
            f"data.probe_size={probe_size} + data.valid_size={valid_size} + "
            f"data.test_size={test_size} = {held_out} held out plus at least one for training "
            f"(lower them, or raise data.max_pairs)")
    order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
    bounds = np.cumsum([0, probe_size, valid_size, test_size, len(sources) - held_out])
    parts = {}
    for name, start, stop in zip(("probe", "valid", "test", "train"), bounds[:-1], bounds[1:]):
        parts[name] = [pair for src in order[start:stop] for pair in by_source[src]]
    return Split(**parts)


def read_lines(path: str | os.PathLike) -> list[str]:
    """The sentences of a file this stage wrote (one per line, UTF-8, LF)."""
    path = Path(path)
    if not path.is_file() and not (path.parent / STAGE_RECORD).is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.prepare` first")
    lines = checked_file(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    text = "\n".join(lines)
    write_text(path, text + "\n" if text else "")


def corpus_files(cfg: DictConfig) -> list[Path]:
    """The user's corpus files the data stage reads (the archive, or the two parallel files), as the
    config names them; the default archive is where `locate_archive` puts its download."""
    if cfg.data.format == "parallel":
        return [Path(str(cfg.data.src_file)), Path(str(cfg.data.tgt_file))]
    if cfg.data.archive:
        return [Path(str(cfg.data.archive)).expanduser()]
    name = Path(urllib.parse.urlparse(str(cfg.data.url)).path).name or DEFAULT_ARCHIVE_NAME
    return [Path(str(cfg.data.resources_dir)).expanduser() / name]


def prepare_command() -> str:
    """The command that (re)makes the data split and the tokenizer with this run's settings."""
    return stage_command("pipeline.prepare", drop=("objective", "seed"))


def prepare_data(cfg: DictConfig) -> Path:
    """Read, check and split the corpus into cfg.paths.data; skipped when already done for this
    data config and the same corpus files (their sha256 compared with the record). Returns the folder.
    One writer at a time: a second is refused while the first runs."""
    with one_writer(cfg.paths.data):
        return _prepare_data(cfg)


def _prepare_data(cfg: DictConfig) -> Path:
    folder = Path(str(cfg.paths.data))
    config = data_config(cfg)
    problem = stage_problem(folder, config)
    if problem is None:
        log.info("data in %s is up to date; skipping", folder)
        return folder
    if (folder / STAGE_RECORD).is_file():
        log.info("redoing the data split: %s", problem)
    # A stale record must not vouch for a half-rewritten folder if this run dies midway.
    (folder / STAGE_RECORD).unlink(missing_ok=True)

    seed = require(cfg, "data.split_seed", lambda v: _is_int(v) and v >= 0,
                   "must be a non-negative integer")
    max_pairs = require(cfg, "data.max_pairs", lambda v: v is None or (_is_int(v) and v > 0),
                        "must be null or a positive integer")
    pairs, inputs = read_corpus(cfg)
    n_read, n_sources_read = len(pairs), len(distinct_sources(pairs))
    log.info("read %d pairs, %d distinct source sentences", n_read, n_sources_read)
    if max_pairs is not None:
        pairs = subsample_sources(pairs, max_pairs, seed)
        log.info("data.max_pairs=%d: kept %d pairs of %d source sentences", max_pairs, len(pairs),
                 len(distinct_sources(pairs)))
    split = split_pairs(pairs, cfg.data.valid_size, cfg.data.test_size, cfg.data.probe_size, seed)

    counts: dict[str, int] = {"pairs_read": n_read, "sources_read": n_sources_read}
    with recording(folder) as ledger:
        for name in SPLITS:
            part: list[Pair] = getattr(split, name)
            _write_lines(folder / f"{name}.src", (src for src, _ in part))
            _write_lines(folder / f"{name}.tgt", (tgt for _, tgt in part))
            counts[f"{name}_pairs"] = len(part)
            counts[f"{name}_sources"] = len(distinct_sources(part))
        for name in ("train", "valid"):
            _write_lines(folder / f"{name}.mono", distinct_sources(getattr(split, name)))
        _write_lines(folder / "probe.txt", split.probe_sentences)
    counts["probe_sentences"] = len(split.probe_sentences)
    counts["probe_pairs"] = len(split.probe)

    archive_sha = next(iter(inputs.values())) if cfg.data.format == "archive" else None
    write_stage_record(folder, "data", config, ledger=ledger, root=cfg.paths.results, inputs=inputs,
                       command=prepare_command(), archive_sha256=archive_sha, counts=counts)
    log.info("wrote %s: %s", folder, ", ".join(f"{k}={v}" for k, v in counts.items()))
    return folder
