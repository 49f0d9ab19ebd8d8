"""The subword vocabulary and frequency ranks (pipeline.prepare.tokenizer)."""
from __future__ import annotations

import json
import pickle
import random
import zipfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from pipeline.config.compose import compose
from pipeline.prepare.corpus import prepare_data, read_lines
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import (Tokenizer, frequency_ranks, load_frequency_counts,
                                load_frequency_ranks, train_tokenizer)

ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"

REAL_ARCHIVE = Path(__file__).resolve().parents[3] / "shared/data/tatoeba-deu-eng/deu-eng.zip"
EN = ("the a house dog cat sees big small red green runs sleeps quickly today we you they never "
      "always garden window yellow").split()
DE = ("das ein Haus Hund Katze sieht groß klein rot grün läuft schläft Straße Größe Übung Öl "
      "Äpfel müssen gefällt heißt").split()
VOCAB = 400
UNSEEN = "Ωμέγα 漢字 🙂 ǅ Ħ ‰ naïve Ærø"


def synthetic_zip(path: Path, n_sources: int = 400, seed: int = 0, extra: Sequence[str] = ()) -> Path:
    """A zip of `n_sources` random sentences with 1-3 translations each, and the `extra` lines."""
    rng = random.Random(seed)
    lines = list(extra)
    for i in range(n_sources):
        src = " ".join(rng.choice(EN) for _ in range(rng.randint(2, 8))) + f" {i}."
        for _ in range(rng.randint(1, 3)):
            tgt = " ".join(rng.choice(DE) for _ in range(rng.randint(2, 8))) + "!"
            lines.append(f"{src}\t{tgt}")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("deu.txt", "\n".join(sorted(lines, key=len)) + "\n")
    return path


def synthetic_config(root: Path, *overrides: str, extra: Sequence[str] = ()):
    archive = root / "deu-eng.zip"
    if not archive.exists():
        root.mkdir(parents=True, exist_ok=True)
        synthetic_zip(archive, extra=extra)
    return compose(["experiment=smoke", f"paths.results={root / 'results'}",
                    f"data.archive={archive}",
                    "data.max_pairs=null", "data.valid_size=20", "data.test_size=20",
                    "data.probe_size=20", f"data.tokenizer.vocab_size={VOCAB}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """(cfg, tokenizer) trained once on a synthetic corpus for the tests that only read it."""
    cfg = synthetic_config(tmp_path_factory.mktemp("synthetic"))
    prepare_data(cfg)
    return cfg, Tokenizer.load(train_tokenizer(cfg))


def test_special_ids(trained) -> None:
    _, tok = trained
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset(range(5)) and tok.n_special == 5
    assert tok.piece(4) == "[MASK]" and tok.piece(5) == "<0x00>" and tok.vocab_size == VOCAB
    assert len(tok) == VOCAB


def test_every_ordinary_id_is_a_usable_token(trained) -> None:
    _, tok = trained
    ids = list(range(tok.n_special, tok.vocab_size))
    # random replacement tokens are drawn from this range: each must decode, byte pieces included
    for i in ids:
        assert isinstance(tok.decode([i]), str)
    assert isinstance(tok.decode(random.Random(0).choices(ids, k=200)), str)


def test_literal_mask_text_is_not_the_mask_token(trained) -> None:
    _, tok = trained
    ids = tok.encode("Say [MASK] now")
    assert tok.mask_id not in ids and tok.decode(ids) == "Say [MASK] now"


def test_byte_fallback_round_trips_unseen_characters(trained) -> None:
    _, tok = trained
    ids = tok.encode(UNSEEN)
    assert tok.unk_id not in ids
    assert any(tok.piece(i).startswith("<0x") for i in ids)
    assert tok.decode(ids) == UNSEEN


def test_decode_ignores_pad_bos_eos_and_batches_agree(trained) -> None:
    _, tok = trained
    texts = ["the big dog sees a cat.", "Das Haus ist groß!", "Übung macht den Meister."]
    encoded = tok.encode_batch(texts)
    assert encoded == [tok.encode(t) for t in texts] and tok.encode_batch([]) == []
    assert all(tok.bos_id not in ids and tok.eos_id not in ids for ids in encoded)
    padded = [tok.bos_id, *np.array(encoded[1]), tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(padded) == texts[1]


def test_tokenizer_pickles(trained) -> None:
    _, tok = trained
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode(UNSEEN) == tok.encode(UNSEEN) and copy.vocab_size == tok.vocab_size


def test_frequency_ranks(trained) -> None:
    cfg, tok = trained
    folder = Path(cfg.paths.tokenizer)
    ranks, counts = load_frequency_ranks(folder), load_frequency_counts(folder)
    assert ranks.shape == counts.shape == (tok.vocab_size,)
    assert sorted(ranks.tolist()) == list(range(1, tok.vocab_size + 1))
    expected = Counter(i for line in read_lines(Path(cfg.paths.data) / "train.mono")
                       for i in tok.encode(line))
    assert counts.tolist() == [expected.get(i, 0) for i in range(tok.vocab_size)]
    by_rank = np.argsort(ranks)
    assert all(counts[a] > counts[b] or (counts[a] == counts[b] and a < b)
               for a, b in zip(by_rank[:-1], by_rank[1:]))
    assert counts[by_rank[0]] == counts.max() and ranks[tok.pad_id] > (counts > 0).sum()
    header, first = (folder / "freq.tsv").read_text(encoding="utf-8").split("\n")[:2]
    assert header == "id\tpiece\tcount\trank" and first.startswith("0\t<pad>\t0\t")


def test_no_zero_width_pieces(tmp_path: Path) -> None:
    """Zero-width characters and byte-order marks in the corpus are removed when it is read: the
    vocabulary holds no piece made of them, and the sentences with them are the plain ones."""
    extra = [f"the\u200b big\ufeff dog {i}\u2060 sees\u200c a\u200d cat.\tdas\u200b Haus\ufeff {i}!"
             for i in range(60)]
    cfg = synthetic_config(tmp_path, extra=extra)
    prepare_data(cfg)
    tok = Tokenizer.load(train_tokenizer(cfg))
    assert not [tok.piece(i) for i in range(tok.vocab_size) if set(tok.piece(i)) & set(ZERO_WIDTH)]
    mono = read_lines(Path(cfg.paths.data) / "train.mono")
    assert sum(line.startswith("the big dog ") and line.endswith(" sees a cat.") for line in mono) > 30


def test_frequencies_leave_out_what_training_drops(tmp_path: Path) -> None:
    """A sentence longer than data.max_len tokens, which training leaves out, is not counted either:
    freq.tsv counts the other sentences exactly, and the record says one sentence was left out."""
    huge = " ".join(["quickly"] * 3000) + " 9999."
    cfg = synthetic_config(tmp_path, extra=[f"{huge}\tSchnell!"])
    prepare_data(cfg)
    folder = train_tokenizer(cfg)
    tok = Tokenizer.load(folder)
    mono = read_lines(Path(cfg.paths.data) / "train.mono")
    assert huge in mono and len(tok.encode(huge)) > cfg.data.max_len  # the line reaches the counting
    expected = Counter(i for line in mono if line != huge for i in tok.encode(line))
    assert load_frequency_counts(folder).tolist() == [expected.get(i, 0) for i in range(tok.vocab_size)]
    counted = json.loads((folder / "stage.json").read_text())["frequency_counts"]
    assert counted["sentences"] == len(mono) - 1 and counted["left_out"] == 1
    assert f"data.max_len={cfg.data.max_len}" in counted["left_out_why"]
    # the counts depend on data.max_len: raising it counts the line again
    cfg = synthetic_config(tmp_path, "data.max_len=100000")
    prepare_data(cfg)
    folder = train_tokenizer(cfg)
    tok = Tokenizer.load(folder)
    assert json.loads((folder / "stage.json").read_text())["frequency_counts"]["left_out"] == 0
    expected = Counter(i for line in mono for i in tok.encode(line))
    assert load_frequency_counts(folder).tolist() == [expected.get(i, 0) for i in range(tok.vocab_size)]


def test_frequency_ranks_break_ties_by_id() -> None:
    assert frequency_ranks(np.array([0, 5, 2, 5, 0])).tolist() == [4, 1, 3, 2, 5]


def test_skips_when_current_and_retrains_on_change(trained, tmp_path: Path) -> None:
    cfg, _ = trained
    folder = Path(cfg.paths.tokenizer)
    before = {f: (folder / f).stat().st_mtime_ns for f in ("stage.json", "spm.model", "freq.tsv")}
    train_tokenizer(cfg)
    assert {f: (folder / f).stat().st_mtime_ns for f in before} == before
    cfg2 = synthetic_config(tmp_path, "data.tokenizer.max_train_sentences=300")
    prepare_data(cfg2)
    out = train_tokenizer(cfg2)
    record = json.loads((out / "stage.json").read_text())
    assert record["stage"] == "tokenizer" and record["train_sentences"] == 300
    # same data, same settings: byte-identical model (training is deterministic)
    cfg3 = synthetic_config(tmp_path / "again", "data.tokenizer.max_train_sentences=300")
    prepare_data(cfg3)
    train_tokenizer(cfg3)
    again = Path(cfg3.paths.tokenizer) / "spm.model"
    assert (out / "spm.model").read_bytes() == again.read_bytes()


def test_needs_the_data_stage_and_a_sane_vocab_size(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path)
    with pytest.raises(PipelineError) as e:
        train_tokenizer(cfg)
    assert str(Path(cfg.paths.data)) in str(e.value) and "pipeline.prepare" in str(e.value)
    with pytest.raises(PipelineError, match="spm.model not found"):
        Tokenizer.load(tmp_path)
    # a split made with other data settings must not be trained on
    prepare_data(cfg)
    with pytest.raises(PipelineError, match=r"data.split_seed=0 there, data.split_seed=1 in this run; .*rebuild it with `python -m pipeline.prepare"):
        train_tokenizer(synthetic_config(tmp_path, "data.split_seed=1"))
    cfg = synthetic_config(tmp_path, "data.tokenizer.vocab_size=100")
    prepare_data(cfg)
    with pytest.raises(PipelineError, match="data.tokenizer.vocab_size"):
        train_tokenizer(cfg)


def test_round_trip_on_real_sentences(tmp_path: Path) -> None:
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {REAL_ARCHIVE} (see shared/data/README.md)")
    cfg = compose(["experiment=smoke", f"paths.results={tmp_path}", f"data.archive={REAL_ARCHIVE}"])
    prepare_data(cfg)
    tok = Tokenizer.load(train_tokenizer(cfg))
    data = Path(cfg.paths.data)
    sentences = read_lines(data / "valid.src")[:150] + read_lines(data / "valid.tgt")[:150]
    assert sum(any(c in s for c in "äöüÄÖÜß") for s in sentences) >= 20
    encoded = tok.encode_batch(sentences)
    assert [tok.decode(ids) for ids in encoded] == sentences
    assert not any(tok.unk_id in ids for ids in encoded)
    assert tok.decode(tok.encode(f"Grüß Gott, {UNSEEN}!")) == f"Grüß Gott, {UNSEEN}!"
