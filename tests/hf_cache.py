"""A local Hugging Face hub cache holding saved model folders as revisions of one repository, laid out
as `huggingface_hub` writes it (no network):

    <cache>/models--<org>--<name>/refs/<revision>          the commit hash the branch points at
    <cache>/models--<org>--<name>/snapshots/<commit>/<f>   a symlink to ../../blobs/<sha256 of f>
    <cache>/models--<org>--<name>/blobs/<sha256>           the file's bytes, once however many commits hold it

so that `snapshot_download(repo, revision=<branch>, local_files_only=True)` finds each revision, as it
finds Pythia's `step1000` branch in a user's cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_revision(cache: Path, repo_id: str, revision: str, folder: Path) -> str:
    """Put the files of `folder` in the cache as branch `revision` of `repo_id`; returns its commit hash
    (a hash of the branch name and the files, so that two branches with the same files still have two
    commits, as Pythia's identical step branches do)."""
    repo = repo_folder(cache, repo_id)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    digest = hashlib.sha1(revision.encode())
    blobs = {}
    for path in files:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        digest.update(path.name.encode() + sha.encode())
        blob = repo / "blobs" / sha
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
        blobs[path.name] = sha
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, sha in blobs.items():
        link = snapshot / name
        if not link.exists():
            os.symlink(os.path.join("..", "..", "blobs", sha), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit
