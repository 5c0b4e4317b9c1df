"""Listing labelled files: class folders and CSV / TSV / JSONL manifests.

Both give rows of ``{"path": ..., "label": ..., <extra columns>}``; extra manifest columns
(``domain``, ``speaker``, ``accent``) are kept for grouped evaluation. Relative paths in a
manifest are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tlmulti.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def resolve_source(ref: str) -> Path:
    """A data path from a recipe or flag; ``dataset:NAME/SPLIT`` prepares a built-in dataset."""
    if ref.startswith("dataset:"):
        from tlmulti.datasets import dataset_path

        return dataset_path(ref)
    path = Path(ref).expanduser()
    if not path.exists():
        raise DataError(f"Data path '{ref}' does not exist; check --data / the recipe's data section.")
    return path


def read_manifest(path: Path, required=("label",), encoding: str = "utf-8") -> list[dict]:
    """Rows of a CSV, TSV or JSONL manifest; every column in ``required`` must be present."""
    path = Path(path)
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # a byte-order mark (Excel writes one) is not part of the first column name
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Manifest '{path}' is not valid {encoding.upper()} (byte {exc.start}); re-save it as UTF-8."
        ) from None
    except OSError as exc:
        raise DataError(f"Manifest '{path}' cannot be read: {exc.strerror}.") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. may sit inside strings
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise DataError(f"Manifest '{path}' line {n} is not a JSON object; JSONL needs one object per line.") from None
            if not isinstance(row, dict):
                raise DataError(f"Manifest '{path}' line {n} is not a JSON object; JSONL needs one object per line.")
            rows.append(row)
    else:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        # a file-like object keeps newlines inside quoted fields (free text spans lines)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = [dict(r) for r in reader]
    if not rows:
        raise DataError(f"Manifest '{path}' has no rows.")
    columns = set(rows[0])
    for name in required:
        if name not in columns:
            raise DataError(
                f"Manifest '{path}' has no '{name}' column (columns: {', '.join(sorted(map(str, columns)))}); "
                f"add it or set the recipe's data column key."
            )
    for n, row in enumerate(rows, 2):
        for name in required:
            if row.get(name) in (None, ""):
                raise DataError(f"Manifest '{path}' row {n - 1} has an empty '{name}'.")
    return rows


def file_suffix(path) -> str:
    """The format suffix of a file, lower case; ``.nii.gz`` counts as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def files_in(path, suffixes, kind: str = "files") -> list[Path]:
    """A single file, or every file with one of ``suffixes`` in a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and file_suffix(p) in suffixes)
        if not files:
            raise DataError(f"Folder '{path}' has no {kind} ({', '.join(suffixes)}).")
        return files
    raise DataError(f"'{path}' does not exist.")


def list_class_folders(root: Path, suffixes) -> list[dict]:
    """Rows ``{"path", "label"}`` for ``root/<class>/<file>`` with one of ``suffixes``."""
    root = Path(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"Data folder '{root}' has no class sub-folders; use one sub-folder per class "
            f"(e.g. {root}/cat/*.jpg) or a CSV manifest."
        )
    rows = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and file_suffix(p) in suffixes)
        if not files:
            raise DataError(
                f"Class folder '{folder}' has no files ({', '.join(sorted(suffixes))}); "
                "add examples or remove the folder."
            )
        rows.extend({"path": str(p), "label": folder.name} for p in files)
    return rows


def rows_from(source: Path, suffixes, required=("path", "label"), label_column="label",
              path_column="path") -> list[dict]:
    """Rows from a class-folder tree or a manifest, with ``path`` made absolute."""
    source = Path(source)
    if source.is_dir():
        return list_class_folders(source, suffixes)
    if source.suffix.lower() not in MANIFEST_SUFFIXES:
        raise DataError(
            f"Data '{source}' is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})."
        )
    req = [path_column if c == "path" else label_column if c == "label" else c for c in required]
    rows = read_manifest(source, required=req)
    out = []
    for row in rows:
        row = dict(row)
        if path_column in row:
            p = Path(str(row.pop(path_column))).expanduser()
            row["path"] = str(p if p.is_absolute() else (source.parent / p))
        if label_column in row and label_column != "label":
            row["label"] = row.pop(label_column)
        out.append(row)
    return out
