"""Reading labelled texts: CSV / TSV / JSONL manifests, or class folders of ``.txt`` files.

Every reader gives rows ``{"text": ..., "label": ..., <other columns>}``. In a manifest the text
may come from several columns joined with a newline (``subject`` + ``body``); extra columns such
as ``domain`` are kept for per-domain reports. A folder holds one sub-folder per class with one
text per ``.txt`` file. Files must be in the configured encoding (UTF-8 by default); a file that
is not, an empty text, or a missing column is a :class:`~tlmulti.errors.DataError` naming the
file, the row and the fix.

Example::

    from tlmulti.data.text import read_text_rows
    rows = read_text_rows("mails.csv", text_columns=["subject", "body"], label_column="label")
    rows[0]["text"], rows[0]["label"], rows[0].get("domain")
"""

from __future__ import annotations

from pathlib import Path

from tlmulti.data.manifest import MANIFEST_SUFFIXES, list_class_folders, read_manifest
from tlmulti.errors import DataError

TEXT_SUFFIXES = (".txt",)


def read_text_file(path, encoding: str = "utf-8") -> str:
    """The whole text of ``path``; a clear error when it is not in ``encoding``."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            encoding = "utf-8-sig"  # drops a byte-order mark
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Text file '{path}' is not valid {encoding.upper()} (byte {exc.start}); re-save it as "
            f"{encoding.upper()} or set data.encoding to its encoding (e.g. latin-1)."
        ) from None
    except LookupError:
        raise DataError(f"Unknown encoding '{encoding}' (recipe key data.encoding); use e.g. utf-8 or latin-1.") from None
    except OSError as exc:
        raise DataError(f"Text file '{path}' cannot be read: {exc.strerror}.") from None


def join_columns(row: dict, columns, separator: str = "\n") -> str:
    """The non-empty values of ``columns`` in ``row``, stripped and joined."""
    parts = []
    for c in columns:
        value = row.get(c)
        if value is None:
            continue
        value = str(value).strip()
        if value:
            parts.append(value)
    return separator.join(parts)


def _check_columns(path: Path, rows: list[dict], text_columns, label_column: str | None) -> None:
    columns = set()
    for row in rows[:1000]:
        columns.update(map(str, row))
    listed = ", ".join(sorted(columns))
    for c in text_columns:
        if c not in columns:
            raise DataError(
                f"Data '{path}' has no text column '{c}' (columns: {listed}); name the text column(s) "
                f"with data.text_column (or --text-column)."
            )
    if label_column is not None and label_column not in columns:
        raise DataError(
            f"Data '{path}' has no label column '{label_column}' (columns: {listed}); name it with "
            f"data.label_column (or --label-column)."
        )


def text_columns_of(rows: list[dict], path, label_column: str = "label") -> list[str]:
    """The text column of a manifest when none is named: ``text`` when there is one, else the
    only column (besides the label) holding words rather than numbers, ids or paths."""
    columns = list(dict.fromkeys(str(k) for row in rows[:1000] for k in row if k is not None))
    if "text" in columns:
        return ["text"]

    def values(column):
        return [str(r.get(column) or "").strip() for r in rows[:200]]

    def numeric(v):
        try:
            float(v)
            return True
        except ValueError:
            return not v

    stringy = [c for c in columns if c != label_column and not all(numeric(v) for v in values(c))]
    wordy = [c for c in stringy if sum(" " in v for v in values(c)) >= max(1, len(values(c)) // 4)]
    for candidates in (stringy, wordy):
        if len(candidates) == 1:
            return candidates
    candidates = wordy or stringy
    found = f"several text-like columns ({', '.join(candidates)})" if candidates else "no text-like column"
    raise DataError(
        f"Data '{path}' has no 'text' column and {found} (columns: {', '.join(columns)}); name the text "
        "column(s) with --text-column (data.text_column), repeating it to join several."
    )


def _manifest_rows(path: Path, text_columns, label_column, labelled, encoding, separator) -> list[dict]:
    rows = read_manifest(path, required=(), encoding=encoding)
    if not text_columns:
        text_columns = text_columns_of(rows, path, label_column)
    _check_columns(path, rows, text_columns, label_column if labelled else None)
    line_word = "line" if path.suffix.lower() in (".jsonl", ".json") else "row"
    out = []
    for n, row in enumerate(rows, 1):
        text = join_columns(row, text_columns, separator)
        if not text:
            raise DataError(
                f"Data '{path}' {line_word} {n} has an empty text (column {' + '.join(text_columns)}); "
                "fill it in or remove the row."
            )
        item = {k: v for k, v in row.items() if k not in text_columns and k is not None}
        item["text"] = text
        if labelled:
            label = row.get(label_column)
            if label is None or str(label).strip() == "":
                raise DataError(f"Data '{path}' {line_word} {n} has an empty label (column '{label_column}').")
            item.pop(label_column, None)
            item["label"] = str(label).strip()
        out.append(item)
    return out


def _file_rows(files, encoding: str, labels=None) -> list[dict]:
    out = []
    for i, f in enumerate(files):
        text = read_text_file(f, encoding).strip()
        if not text:
            raise DataError(f"Text file '{f}' is empty; remove it or add its text.")
        row = {"text": text, "path": str(f)}
        if labels is not None:
            row["label"] = labels[i]
        out.append(row)
    return out


def read_text_rows(source, text_columns=("text",), label_column: str = "label", labelled: bool = True,
                   encoding: str = "utf-8", separator: str = "\n") -> list[dict]:
    """Rows ``{"text", "label", ...}`` from a manifest or a class-folder tree. An empty
    ``text_columns`` picks the column itself (:func:`text_columns_of`).

    Unlabelled (``labelled=False``) also accepts a folder of ``.txt`` files or a ``.txt`` file
    with one text per line.
    """
    source = Path(source)
    text_columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if source.is_dir():
        has_classes = any(p.is_dir() and not p.name.startswith(".") for p in source.iterdir())
        if not has_classes and not labelled:
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise DataError(f"Folder '{source}' has no .txt files.")
            return _file_rows(files, encoding)
        listed = list_class_folders(source, TEXT_SUFFIXES)
        return _file_rows([r["path"] for r in listed], encoding, [r["label"] for r in listed])
    suffix = source.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return _manifest_rows(source, text_columns, label_column, labelled, encoding, separator)
    if suffix in TEXT_SUFFIXES and not labelled:
        lines = [l.strip() for l in read_text_file(source, encoding).split("\n")]
        rows = [{"text": l} for l in lines if l]
        if not rows:
            raise DataError(f"Text file '{source}' has no non-empty lines.")
        return rows
    raise DataError(
        f"Data '{source}' is neither a class folder of .txt files nor a manifest "
        f"({', '.join(MANIFEST_SUFFIXES)}) with text and label columns."
    )
