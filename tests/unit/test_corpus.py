"""Corpus loading, validation and the grouped split (pipeline.prepare.corpus)."""
from __future__ import annotations

import io
import json
import random
import re
import unicodedata
import urllib.error
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipeline.prepare import corpus
from pipeline.config.compose import compose
from pipeline.prepare.corpus import (PipelineError, locate_archive, normalise, prepare_data, read_archive,
                             read_lines, read_parallel, split_pairs)
from pipeline.records.files import sha256_file

REAL_ARCHIVE = Path(__file__).resolve().parents[3] / "shared/data/tatoeba-deu-eng/deu-eng.zip"
EN = "the a house dog cat sees big small red green runs sleeps quickly today we you they".split()
DE = "das ein Haus Hund Katze sieht groß klein rot grün läuft schläft Straße Größe Übung Öl".split()


def synthetic_pairs(n_sources: int, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct sources with 1-3 translations each, sorted by source length like the real file."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n_sources):
        src = " ".join(rng.choice(EN) for _ in range(rng.randint(2, 8))) + f" {i}."
        for _ in range(rng.randint(1, 3)):
            pairs.append((src, " ".join(rng.choice(DE) for _ in range(rng.randint(2, 8))) + "."))
    return sorted(pairs, key=lambda p: len(p[0]))


def make_zip(path: Path, body: str | bytes, member: str = "deu.txt") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, body if isinstance(body, bytes) else body.encode("utf-8"))
    return path


def pairs_zip(path: Path, pairs: list[tuple[str, str]]) -> Path:
    return make_zip(path, "".join(f"{s}\t{t}\n" for s, t in pairs))


def config(tmp_path: Path, *overrides: str):
    return compose(["experiment=smoke", f"paths.results={tmp_path / 'results'}", *overrides])


def small_config(tmp_path: Path, archive: Path, *overrides: str):
    return config(tmp_path, f"data.archive={archive}", "data.max_pairs=null", "data.valid_size=20",
                  "data.test_size=30", "data.probe_size=10", *overrides)


# --- reading -------------------------------------------------------------------------------------

ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def spelt_apart(sentence: str) -> list[str]:
    """One sentence as a corpus may hold it: composed, decomposed, with zero-width characters or a
    byte-order mark inside; all of them are one sentence once normalised."""
    nfc = unicodedata.normalize("NFC", sentence)
    return [nfc, unicodedata.normalize("NFD", nfc), nfc.replace(" ", "\u200b ", 1), "\ufeff" + nfc,
            nfc.replace(" ", " \u2060", 1), nfc[:2] + "\u200c\u200d" + nfc[2:],
            unicodedata.normalize("NFD", nfc).replace(" ", "\u200b  ")]


def test_normalise_nfc_zero_width_then_whitespace() -> None:
    assert normalise("  Grüß\u00a0\u00a0Gott!\t ") == "Grüß Gott!"
    assert normalise("Cafe\u0301  OK") == "Caf\u00e9 OK"  # NFC: a decomposed é is composed
    assert normalise("\ufeffa\u200bb\u200cc\u200dd\u2060e") == "abcde"
    assert normalise("e\u200b\u0301 x \u200b y") == "\u00e9 x y"  # removed first, then composed and collapsed
    # no case folding, no compatibility mapping (NFKC would change these)
    assert normalise("ﬁne Ｆ ½") == "ﬁne Ｆ ½"
    base = "Café über Öl, naïve Ærø."
    assert {normalise(v) for v in spelt_apart(base)} == {base}
    assert all(normalise(normalise(v)) == normalise(v) for v in spelt_apart(base))


def test_every_corpus_format_is_normalised_alike(tmp_path: Path) -> None:
    variants = spelt_apart("Grüße aus Köln.")
    pairs = [(v, f"Grüße {i}, Café.".replace("é", "e\u0301")) for i, v in enumerate(variants)]
    src, tgt = write_parallel(tmp_path, "".join(f"{s}\n" for s, _ in pairs).encode(),
                              "".join(f"{t}\n" for _, t in pairs).encode())
    expected = [("Grüße aus Köln.", f"Grüße {i}, Café.") for i in range(len(variants))]
    assert read_parallel(src, tgt) == read_archive(pairs_zip(tmp_path / "c.zip", pairs), "deu.txt") == expected


def test_split_sees_normalised_text(tmp_path: Path) -> None:
    """Sentences equal up to NFC or zero-width characters are one source sentence: all in one split."""
    bases = [f"Café {i} über Öl, naïve Ærø." for i in range(12)]
    pairs = synthetic_pairs(100) + [(v, f"Kaffee {i}.{j}!") for i, base in enumerate(bases)
                                    for j, v in enumerate(spelt_apart(base))]
    folder = prepare_data(small_config(tmp_path, pairs_zip(tmp_path / "c.zip", sorted(pairs, key=len))))
    files = {name: read_lines(folder / name) for name in ("train.src", "valid.src", "test.src", "probe.txt")}
    n_forms = len(spelt_apart(bases[0]))
    for base in bases:
        holders = [name for name, lines in files.items() if base in lines]
        assert len(holders) == 1, f"{base!r} is in {holders}"
        if holders[0] != "probe.txt":  # all its translations went with it
            assert files[holders[0]].count(base) == n_forms
    for name in (*files, "train.tgt", "train.mono", "valid.mono"):
        for line in read_lines(folder / name):
            assert line == unicodedata.normalize("NFC", line) and not ZERO_WIDTH.search(line), (name, line)
    record = json.loads((folder / "stage.json").read_text())
    assert record["counts"]["sources_read"] == 100 + len(bases)
    assert "NFC" in json.dumps(record["config"])  # the record says how text was read: older splits are stale


def test_two_and_three_columns_parse_equal(tmp_path: Path) -> None:
    two = make_zip(tmp_path / "two.zip", "Hi.\tHallo!\nRun!\t  Lauf! \n")
    three = make_zip(tmp_path / "three.zip", "Hi.\tHallo!\tCC-BY 2.0 (France) #1\n"
                                             "Run!\t  Lauf! \tCC-BY 2.0 (France) #2\n")
    assert read_archive(two, "deu.txt") == read_archive(three, "deu.txt") == [
        ("Hi.", "Hallo!"), ("Run!", "Lauf!")]


@pytest.mark.parametrize("bad_line", ["only one column", "a\tb\tc\td"])
def test_wrong_column_count_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    path = make_zip(tmp_path / "bad.zip", f"Hi.\tHallo!\nRun!\tLauf!\n{bad_line}\nGo.\tGeh.\n")
    with pytest.raises(PipelineError) as e:
        read_archive(path, "deu.txt")
    assert str(path) in str(e.value) and "deu.txt" in str(e.value) and "line 3" in str(e.value)
    assert str(len(bad_line.split("\t"))) in str(e.value)


def test_archive_bad_utf8_and_empty_sentence(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", b"Hi.\tHallo!\nRun!\tL\xe4uf!\n")
    with pytest.raises(PipelineError, match="line 2.*UTF-8"):
        read_archive(path, "deu.txt")
    path = make_zip(tmp_path / "b.zip", "Hi.\tHallo!\n \tLauf!\n")
    with pytest.raises(PipelineError, match="line 2: empty source"):
        read_archive(path, "deu.txt")


def test_not_a_zip_or_missing_member(tmp_path: Path) -> None:
    fake = tmp_path / "deu-eng.zip"
    fake.write_text("<html>not an archive</html>")
    with pytest.raises(PipelineError, match="not a zip archive") as e:
        prepare_data(config(tmp_path, f"data.archive={fake}"))
    assert str(fake) in str(e.value)
    with pytest.raises(PipelineError, match="not a valid zip archive"):
        read_archive(fake, "deu.txt")
    other = make_zip(tmp_path / "other.zip", "Hi.\tHallo!\n", member="fra.txt")
    with pytest.raises(PipelineError, match="no member 'deu.txt'.*fra.txt") as e:
        read_archive(other, "deu.txt")
    assert str(other) in str(e.value)


def write_parallel(tmp_path: Path, src: bytes, tgt: bytes) -> tuple[Path, Path]:
    (tmp_path / "s.en").write_bytes(src)
    (tmp_path / "t.de").write_bytes(tgt)
    return tmp_path / "s.en", tmp_path / "t.de"


def test_parallel_reads_and_normalises(tmp_path: Path) -> None:
    src, tgt = write_parallel(tmp_path, "\ufeffHi.\n Good  night.\r\n".encode(),
                              "Hallo!\nGute\tNacht.\n".encode())
    assert read_parallel(src, tgt) == [("Hi.", "Hallo!"), ("Good night.", "Gute Nacht.")]


def test_parallel_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    src, tgt = write_parallel(tmp_path, b"a\nb\nc\n", b"x\n\xff\xfe\nz\n")
    with pytest.raises(PipelineError) as e:
        read_parallel(src, tgt)
    assert f"{tgt}, line 2" in str(e.value) and "UTF-8" in str(e.value)


def test_parallel_empty_sentence_names_file_and_line(tmp_path: Path) -> None:
    src, tgt = write_parallel(tmp_path, b"a\nb\n \t \nd\n", b"w\nx\ny\nz\n")
    with pytest.raises(PipelineError) as e:
        read_parallel(src, tgt)
    assert f"{src}, line 3" in str(e.value) and "empty" in str(e.value)


def test_parallel_missing_file_and_count_mismatch(tmp_path: Path) -> None:
    src, tgt = write_parallel(tmp_path, b"a\nb\nc\n", b"x\ny\n")
    with pytest.raises(PipelineError) as e:
        read_parallel(src, tgt)
    assert all(s in str(e.value) for s in (str(src), str(tgt), "3 lines", "has 2"))
    with pytest.raises(PipelineError) as e:
        read_parallel(src, tmp_path / "absent.de")
    assert "data.tgt_file" in str(e.value) and str(tmp_path / "absent.de") in str(e.value)
    cfg = config(tmp_path, "data.format=parallel", f"data.src_file={src}")
    with pytest.raises(PipelineError, match="data.tgt_file"):
        prepare_data(cfg)


def test_prepare_from_parallel_files(tmp_path: Path) -> None:
    pairs = synthetic_pairs(100)
    src, tgt = write_parallel(tmp_path, "".join(f"{s}\n" for s, _ in pairs).encode(),
                              "".join(f"{t}\n" for _, t in pairs).encode())
    cfg = config(tmp_path, "data.format=parallel", f"data.src_file={src}", f"data.tgt_file={tgt}",
                 "data.max_pairs=null", "data.valid_size=10", "data.test_size=10",
                 "data.probe_size=10")
    folder = prepare_data(cfg)
    record = json.loads((folder / "stage.json").read_text())
    assert record["archive_sha256"] is None and record["inputs"] == {str(src): sha256_file(src), str(tgt): sha256_file(tgt)}
    written = sum(len(read_lines(folder / f"{s}.src")) for s in ("train", "valid", "test"))
    assert written + record["counts"]["probe_pairs"] == len(pairs)


# --- locating and downloading -------------------------------------------------------------------

def test_locate_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PipelineError, match="data.archive.*not found"):
        locate_archive(config(tmp_path, f"data.archive={tmp_path / 'absent.zip'}"))
    resources = tmp_path / "res"
    resources.mkdir()
    local = make_zip(resources / "deu-eng.zip", "Hi.\tHallo!\n")

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the archive is in resources_dir")

    monkeypatch.setattr(corpus.urllib.request, "urlopen", no_network)
    assert locate_archive(config(tmp_path, f"data.resources_dir={resources}")) == local


def test_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("deu.txt", "Hi.\tHallo!\n")
    requests = []

    def fake_urlopen(request, timeout):
        requests.append(request)
        return io.BytesIO(body)

    monkeypatch.setattr(corpus.urllib.request, "urlopen", fake_urlopen)
    cfg = config(tmp_path, f"data.resources_dir={tmp_path / 'res'}")
    body = b"<html>rate limited</html>"  # a server's error page must never land as the archive
    with pytest.raises(PipelineError, match="not a zip archive.*data.archive="):
        locate_archive(cfg)
    assert not (tmp_path / "res" / "deu-eng.zip").exists()
    assert list((tmp_path / "res").iterdir()) == []  # no temporary file left behind
    body = buffer.getvalue()
    assert locate_archive(cfg) == tmp_path / "res" / "deu-eng.zip"
    assert read_archive(tmp_path / "res" / "deu-eng.zip", "deu.txt") == [("Hi.", "Hallo!")]
    assert requests[-1].full_url == cfg.data.url and requests[-1].get_header("User-agent")

    def offline(request, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(corpus.urllib.request, "urlopen", offline)
    with pytest.raises(PipelineError, match="by hand.*data.archive="):
        locate_archive(config(tmp_path, f"data.resources_dir={tmp_path / 'elsewhere'}"))


# --- splitting -----------------------------------------------------------------------------------

def sources_of(pairs: list[tuple[str, str]]) -> set[str]:
    return {s for s, _ in pairs}


def test_split_is_grouped_exact_and_complete() -> None:
    pairs = synthetic_pairs(300)
    split = split_pairs(pairs, valid_size=20, test_size=30, probe_size=10, seed=0)
    parts = {"train": split.train, "valid": split.valid, "test": split.test, "probe": split.probe}
    sizes = {name: len(sources_of(part)) for name, part in parts.items()}
    assert sizes == {"train": 240, "valid": 20, "test": 30, "probe": 10}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sources_of(parts[a]) & sources_of(parts[b]), (a, b)
    assert Counter(p for part in parts.values() for p in part) == Counter(pairs)
    assert split.probe_sentences == list(dict.fromkeys(s for s, _ in split.probe))
    # the corpus is sorted by length: held-out sentences must not be its head or tail
    ordered = list(dict.fromkeys(s for s, _ in pairs))
    for part in (split.probe, split.valid, split.test):
        assert sources_of(part) not in (set(ordered[:len(sources_of(part))]),
                                        set(ordered[-len(sources_of(part)):]))


def test_split_depends_on_seed_only() -> None:
    pairs = synthetic_pairs(300)
    a = split_pairs(pairs, 20, 30, 10, seed=0)
    assert a == split_pairs(list(pairs), 20, 30, 10, seed=0)
    b = split_pairs(pairs, 20, 30, 10, seed=1)
    assert sources_of(a.valid) != sources_of(b.valid) and a.probe_sentences != b.probe_sentences


def test_split_too_small_names_the_keys() -> None:
    with pytest.raises(PipelineError) as e:
        split_pairs(synthetic_pairs(60), 20, 30, 10, seed=0)
    keys = ("data.valid_size", "data.test_size", "data.probe_size", "60")
    assert all(k in str(e.value) for k in keys)
    with pytest.raises(PipelineError, match="data.test_size"):
        split_pairs(synthetic_pairs(60), 20, -1, 10, seed=0)


# --- the stage -----------------------------------------------------------------------------------

def test_prepare_data_outputs(tmp_path: Path) -> None:
    pairs = synthetic_pairs(300)
    archive = pairs_zip(tmp_path / "deu-eng.zip", pairs)
    folder = prepare_data(small_config(tmp_path, archive))
    files = {name: read_lines(folder / name) for name in corpus.OUTPUT_FILES}
    for name in ("train", "valid", "test"):
        assert len(files[f"{name}.src"]) == len(files[f"{name}.tgt"])
    written = Counter(zip(files["train.src"] + files["valid.src"] + files["test.src"],
                          files["train.tgt"] + files["valid.tgt"] + files["test.tgt"]))
    assert written <= Counter(pairs)
    for name in ("train", "valid"):
        mono = files[f"{name}.mono"]
        assert mono == list(dict.fromkeys(files[f"{name}.src"])) and len(set(mono)) == len(mono)
    assert len(files["valid.mono"]) == 20 and len(set(files["test.src"])) == 30
    probe = files["probe.txt"]
    assert len(probe) == len(set(probe)) == 10
    assert not set(probe) & set(files["train.src"] + files["valid.src"] + files["test.src"])
    record = json.loads((folder / "stage.json").read_text())
    assert record["stage"] == "data" and record["archive_sha256"] == sha256_file(archive)
    assert record["counts"]["train_sources"] == 240
    last = max((folder / name).stat().st_mtime_ns for name in corpus.OUTPUT_FILES)
    assert (folder / "stage.json").stat().st_mtime_ns >= last


def test_max_pairs_keeps_whole_source_groups(tmp_path: Path) -> None:
    pairs = synthetic_pairs(300)
    folder = prepare_data(small_config(tmp_path, pairs_zip(tmp_path / "c.zip", pairs),
                                       "data.max_pairs=100"))
    kept = set(read_lines(folder / "probe.txt"))
    for name in ("train", "valid", "test"):
        kept |= set(read_lines(folder / f"{name}.src"))
    assert len(kept) == 100
    probe_pairs = json.loads((folder / "stage.json").read_text())["counts"]["probe_pairs"]
    written = sum(len(read_lines(folder / f"{s}.src")) for s in ("train", "valid", "test"))
    assert written + probe_pairs == sum(1 for s, _ in pairs if s in kept)


def test_prepare_data_skips_when_current(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = pairs_zip(tmp_path / "c.zip", synthetic_pairs(300))
    folder = prepare_data(small_config(tmp_path, archive))
    before = {name: (folder / name).stat().st_mtime_ns for name in corpus.OUTPUT_FILES}
    with caplog.at_level("INFO", logger="pipeline.corpus"):
        prepare_data(small_config(tmp_path, archive))
    assert "skipping" in caplog.text
    assert before == {name: (folder / name).stat().st_mtime_ns for name in corpus.OUTPUT_FILES}
    prepare_data(small_config(tmp_path, archive, "data.split_seed=1"))
    record = json.loads((folder / "stage.json").read_text())
    assert record["config"]["data"]["split_seed"] == 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "same size"])
def test_a_damaged_split_is_redone_by_prepare_and_named_by_its_readers(tmp_path: Path, damage: str) -> None:
    archive = pairs_zip(tmp_path / "c.zip", synthetic_pairs(300))
    folder = prepare_data(small_config(tmp_path, archive))
    good = (folder / "train.src").read_bytes()
    if damage == "truncate":
        (folder / "train.src").write_bytes(good[:100])
    elif damage == "delete":
        (folder / "train.src").unlink()
    else:  # altered in place, same length: caught by its moved mtime and then its sha256
        (folder / "train.src").write_bytes(good[::-1])
    if damage != "same size":  # readers check the size only (one stat)
        with pytest.raises(PipelineError, match=r"train\.src is .*record.*repair it with `python -m pipeline.prepare"):
            read_lines(folder / "train.src")
    prepare_data(small_config(tmp_path, archive))
    assert (folder / "train.src").read_bytes() == good


def test_a_corpus_edited_in_place_redoes_the_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = pairs_zip(tmp_path / "c.zip", synthetic_pairs(300))
    folder = prepare_data(small_config(tmp_path, archive))
    first = json.loads((folder / "stage.json").read_text())
    pairs_zip(archive, synthetic_pairs(300)[:-40])  # the same path, other content
    with caplog.at_level("INFO", logger="pipeline.corpus"):
        prepare_data(small_config(tmp_path, archive))
    assert "made from another" in caplog.text and str(archive) in caplog.text
    second = json.loads((folder / "stage.json").read_text())
    assert second["inputs"] == {str(archive): sha256_file(archive)} != first["inputs"]
    assert second["counts"]["pairs_read"] < first["counts"]["pairs_read"]


def test_real_archive(tmp_path: Path) -> None:
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {REAL_ARCHIVE} (see shared/data/README.md)")
    pairs = read_archive(REAL_ARCHIVE, "deu.txt")
    assert len(pairs) == 169_813 and len(corpus.distinct_sources(pairs)) == 135_534
    folder = prepare_data(config(tmp_path, f"data.archive={REAL_ARCHIVE}"))
    counts = json.loads((folder / "stage.json").read_text())["counts"]
    assert (counts["train_sources"], counts["valid_sources"], counts["test_sources"],
            counts["probe_sentences"]) == (3400, 200, 200, 200)
    assert len(read_lines(folder / "train.mono")) == 3400
