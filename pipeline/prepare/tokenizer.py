"""The subword vocabulary: a joint source/target BPE model (sentencepiece) and the frequency rank of
every token in the training source side, which the analyses bin tokens by.

Special ids are fixed so that every stage can rely on them: pad=0, unk=1, bos=2, eos=3, [MASK]=4;
ids from 5 on are ordinary tokens (the 256 byte-fallback pieces first, then the learnt subwords).
"""
from __future__ import annotations

import io
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm
from omegaconf import DictConfig

from pipeline.config.checks import require
from pipeline.config.stages import data_config, tokenizer_config
from pipeline.errors import PipelineError
from pipeline.prepare.corpus import prepare_command, read_lines
from pipeline.records.files import STAGE_RECORD, recording, write_bytes, write_text
from pipeline.records.locks import one_writer
from pipeline.records.stage import checked_file, input_hashes, require_upstream, stage_problem, write_stage_record

log = logging.getLogger("pipeline.tokenizer")

MODEL_FILE = "spm.model"
FREQ_FILE = "freq.tsv"
FREQ_HEADER = "id\tpiece\tcount\trank"
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3, 4
MASK_PIECE = "[MASK]"
N_BYTE_PIECES = 256
# Stored in the model's trainer spec, so a constant (not the machine's core count) keeps spm.model
# byte-identical across machines; the learnt vocabulary does not depend on it.
_TRAIN_THREADS = 4
# The max_train_sentences subsample draws from its own stream, apart from the corpus split's.
_SUBSAMPLE_STREAM = 2


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Tokenizer:
    """A trained sentencepiece model with the pipeline's fixed special ids."""

    def __init__(self, model_proto: bytes, source: str = "<in memory>") -> None:
        self._source = source
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise PipelineError(f"{source} is not a sentencepiece model ({e})") from None
        self._check()

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Tokenizer":
        """Load `<folder>/spm.model` (the output of the tokenizer stage)."""
        path = Path(folder) / MODEL_FILE
        if not path.is_file() and not (path.parent / STAGE_RECORD).is_file():
            raise PipelineError(f"{path} not found: run `python -m pipeline.prepare` first")
        return cls(checked_file(path).read_bytes(), source=str(path))

    def _check(self) -> None:
        sp = self._sp
        expected = {"pad": (sp.pad_id(), PAD_ID), "unk": (sp.unk_id(), UNK_ID),
                    "bos": (sp.bos_id(), BOS_ID), "eos": (sp.eos_id(), EOS_ID),
                    MASK_PIECE: (sp.piece_to_id(MASK_PIECE), MASK_ID)}
        wrong = [f"{name}={got} (expected {want})" for name, (got, want) in expected.items()
                 if got != want]
        if wrong:
            raise PipelineError(f"{self._source} has the wrong special ids: {', '.join(wrong)}")
        # Random replacement tokens are drawn from [n_special, vocab_size): none may be special.
        odd = [i for i in range(self.n_special, self.vocab_size)
               if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)]
        if odd:
            raise PipelineError(f"{self._source}: ids {odd[:5]} at or above {self.n_special} are "
                                "special; it was not made by this pipeline")

    def __getstate__(self) -> dict[str, Any]:
        # Data-loader workers pickle the tokenizer; the processor itself is rebuilt from its proto.
        return {"model_proto": self._sp.serialized_model_proto(), "source": self._source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"], state["source"])

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self._source!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID))

    @property
    def n_special(self) -> int:
        """The first ordinary id: every id in [n_special, vocab_size) is a real token (byte pieces
        included: they are what unseen characters encode to, and each decodes on its own)."""
        return max(self.special_ids) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Token ids of each text, without bos/eos (encoded in parallel by sentencepiece)."""
        texts = list(texts)
        return self._sp.encode(texts, out_type=int) if texts else []

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; pad, bos and eos are dropped, [MASK] decodes to nothing."""
        drop = (PAD_ID, BOS_ID, EOS_ID)
        return self._sp.decode([int(i) for i in ids if int(i) not in drop])

    def piece(self, id: int) -> str:
        """The subword string of one id (e.g. '▁house', '<0xC3>', '[MASK]')."""
        return self._sp.id_to_piece(int(id))


def _training_sentences(data_folder: Path, limit: int, seed: int) -> list[str]:
    """Both sides of the training split, or a seeded subsample of `limit` of them (file order)."""
    lines = read_lines(data_folder / "train.src") + read_lines(data_folder / "train.tgt")
    if len(lines) > limit:
        rng = np.random.default_rng([_SUBSAMPLE_STREAM, seed])
        keep = np.sort(rng.choice(len(lines), size=limit, replace=False))
        lines = [lines[i] for i in keep]
    return lines


def train_model(sentences: Sequence[str], vocab_size: int, character_coverage: float) -> bytes:
    """Train the BPE model on `sentences` in memory; returns the serialized model."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type="bpe",
            vocab_size=vocab_size, character_coverage=character_coverage, byte_fallback=True,
            # identity: no NFKC, so decode(encode(s)) == s for the corpus' normalised text (NFC)
            normalization_rule_name="identity",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            # A control symbol, not a user-defined one: the literal text "[MASK]" in a sentence
            # must encode as ordinary characters, never as the mask token.
            control_symbols=[MASK_PIECE],
            # 0: read every sentence given, no random sampling (determinism); we subsample ourselves
            input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=_TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
        raise PipelineError(f"sentencepiece could not train with data.tokenizer.vocab_size="
                            f"{vocab_size}: {e}") from None
    return model.getvalue()


def frequency_ranks(counts: np.ndarray) -> np.ndarray:
    """Rank of each id by count: 1 = most frequent, ties broken by the smaller id."""
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(len(counts)), -counts))
    ranks = np.empty(len(counts), dtype=np.int64)
    ranks[order] = np.arange(1, len(counts) + 1)
    return ranks


def fits(ids: Sequence[int], max_len: int) -> bool:
    """Whether an encoded sentence is within `data.max_len` tokens. Training leaves longer ones out
    (an MT pair when either side is longer), and so does the frequency count: a sentence no model
    ever trains on must not set the frequency ranks the analyses bin tokens by."""
    return len(ids) <= max_len


def count_tokens(tokenizer: Tokenizer, sentences: Sequence[str],
                 max_len: int | None = None) -> tuple[np.ndarray, int]:
    """How often each id occurs in the encoded `sentences` (an int64 array of length vocab_size),
    leaving out those that do not `fit` in `max_len` tokens (None: none left out); and how many were."""
    encoded = tokenizer.encode_batch(sentences)
    kept = encoded if max_len is None else [ids for ids in encoded if fits(ids, max_len)]
    flat = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.int64, count=sum(map(len, kept)))
    return np.bincount(flat, minlength=tokenizer.vocab_size).astype(np.int64), len(encoded) - len(kept)


def write_frequencies(path: Path, tokenizer: Tokenizer, counts: np.ndarray) -> None:
    """Write freq.tsv: `id, piece, count, rank`, one row per vocabulary id, in id order."""
    ranks = frequency_ranks(counts)
    rows = [FREQ_HEADER] + [f"{i}\t{tokenizer.piece(i)}\t{counts[i]}\t{ranks[i]}"
                            for i in range(tokenizer.vocab_size)]
    write_text(path, "\n".join(rows) + "\n")


def _read_frequencies(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    path = Path(folder) / FREQ_FILE
    if not path.is_file() and not (path.parent / STAGE_RECORD).is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.prepare` first")
    lines = read_lines(path)
    if not lines or lines[0] != FREQ_HEADER:
        raise PipelineError(f"{path}, line 1: expected the header {FREQ_HEADER!r}")
    table: dict[int, tuple[int, int]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            # The piece may in principle hold any character, so read the numbers from both ends.
            table[int(fields[0])] = (int(fields[-2]), int(fields[-1]))
        except (ValueError, IndexError):
            raise PipelineError(f"{path}, line {number}: expected id, piece, count, rank") from None
    n = len(table)
    if sorted(table) != list(range(n)) or n != len(lines) - 1:
        raise PipelineError(f"{path}: ids must be 0..{n - 1}, each once")
    counts = np.array([table[i][0] for i in range(n)], dtype=np.int64)
    ranks = np.array([table[i][1] for i in range(n)], dtype=np.int64)
    if sorted(ranks.tolist()) != list(range(1, n + 1)):
        raise PipelineError(f"{path}: ranks are not a permutation of 1..{n}")
    return counts, ranks


def load_frequency_ranks(folder: str | os.PathLike) -> np.ndarray:
    """Frequency rank of each token id (1 = most frequent in train.mono's sentences of at most
    data.max_len tokens), indexed by id."""
    return _read_frequencies(folder)[1]


def load_frequency_counts(folder: str | os.PathLike) -> np.ndarray:
    """How often each token id occurs in train.mono (its sentences of at most data.max_len tokens),
    indexed by id."""
    return _read_frequencies(folder)[0]


def train_tokenizer(cfg: DictConfig) -> Path:
    """Train the BPE model on the training split and count token frequencies, into
    cfg.paths.tokenizer; skipped when already done for this config. Returns the folder. One writer
    at a time: a second is refused while the first runs."""
    with one_writer(cfg.paths.tokenizer):
        return _train_tokenizer(cfg)


def _train_tokenizer(cfg: DictConfig) -> Path:
    folder = Path(str(cfg.paths.tokenizer))
    config = tokenizer_config(cfg)
    data_folder = Path(str(cfg.paths.data))
    if not require_upstream(data_folder, data_config(cfg), prepare_command()):
        raise PipelineError(f"the data stage is not done in {data_folder}: run `python -m pipeline.prepare` "
                            "with the same overrides first")
    problem = stage_problem(folder, config)
    if problem is None:
        log.info("tokenizer in %s is up to date; skipping", folder)
        return folder
    if (folder / STAGE_RECORD).is_file():
        log.info("training the tokenizer again: %s", problem)
    # A stale record must not vouch for a half-rewritten folder if this run dies midway.
    (folder / STAGE_RECORD).unlink(missing_ok=True)

    minimum = MASK_ID + 1 + N_BYTE_PIECES + 1
    vocab_size = require(cfg, "data.tokenizer.vocab_size", lambda v: _is_int(v) and v >= minimum,
                         f"must be an integer >= {minimum} (5 special + 256 byte pieces + "
                         "the characters and subwords)")
    coverage = require(cfg, "data.tokenizer.character_coverage",
                       lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "must be in (0, 1]")
    limit = require(cfg, "data.tokenizer.max_train_sentences", lambda v: _is_int(v) and v > 0,
                    "must be a positive integer")
    max_len = require(cfg, "data.max_len", lambda v: _is_int(v) and v > 0, "must be a positive integer")

    inputs = input_hashes(data_folder / name for name in ("train.src", "train.tgt", "train.mono"))
    sentences = _training_sentences(data_folder, limit, int(cfg.data.split_seed))
    log.info("training a BPE model of %d pieces on %d sentences", vocab_size, len(sentences))
    model = train_model(sentences, vocab_size, float(coverage))
    with recording(folder) as ledger:
        write_bytes(folder / MODEL_FILE, model)
        tokenizer = Tokenizer(model, source=str(folder / MODEL_FILE))
        mono = read_lines(data_folder / "train.mono")
        counts, left_out = count_tokens(tokenizer, mono, max_len)
        write_frequencies(folder / FREQ_FILE, tokenizer, counts)
    unseen = int((counts == 0).sum())
    why = f"longer than data.max_len={max_len} tokens, which training leaves out"
    log.info("counted %d tokens in %d train.mono sentences (%d left out: %s); %d of %d ids never occur",
             int(counts.sum()), len(mono) - left_out, left_out, why, unseen, tokenizer.vocab_size)

    write_stage_record(folder, "tokenizer", config, ledger=ledger, root=cfg.paths.results, inputs=inputs, command=prepare_command(),
                       vocab_size=tokenizer.vocab_size, train_sentences=len(sentences),
                       mono_tokens=int(counts.sum()), unseen_ids=unseen,
                       frequency_counts={"sentences": len(mono) - left_out, "left_out": left_out,
                                         "left_out_why": why},
                       model_sha256=ledger.files[MODEL_FILE].sha256)
    return folder
