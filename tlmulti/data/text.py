"""Reading labelled texts: CSV / TSV / JSONL manifests, or class folders of ``.txt`` files.

Every reader gives rows ``{"text": ..., "label": ..., <other columns>}``. In a manifest the text
may come from several columns joined with a newline (``subject`` + ``body``); extra columns such
as ``domain`` are kept for per-domain reports. A folder holds one sub-folder per class with one
text per ``.txt`` file. Files must be in the configured encoding (UTF-8 by default); a file that
is not, an empty text, or a missing column is a :class:`~tlmulti.errors.DataError` naming the
file, the row and the fix.

Large data streams (:func:`read_text_columns` with ``stream``): the rows are read once to check
them and keep their labels and columns, but each text only as where it is (file, byte offset);
the input pipeline reads it back with :func:`load_text`, parsed exactly as when everything is
read into memory (both go through the same line-by-line reader).

Example::

    from tlmulti.data.text import read_text_rows
    rows = read_text_rows("mails.csv", text_columns=["subject", "body"], label_column="label")
    rows[0]["text"], rows[0]["label"], rows[0].get("domain")
"""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import chain, islice
from pathlib import Path

from tlmulti.data.manifest import MANIFEST_SUFFIXES, list_class_folders
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


def _codec(encoding: str) -> str:
    return "utf-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding


def line_aligned(encoding: str) -> bool:
    """Whether ``encoding`` writes newlines, commas, tabs and quotes as their ASCII bytes, so a
    file can be cut into lines (and read back from a byte offset) before decoding: UTF-8,
    Latin-1, Windows code pages, Shift-JIS, GB18030; not UTF-16 / UTF-32."""
    try:
        return '\n\r,\t"{'.encode(_codec(encoding)) == b'\n\r,\t"{'
    except (LookupError, UnicodeError):
        return False


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # after a carriage return not followed by \n: old Mac line ends


def _lines(path: Path, encoding: str, offset: int = 0):
    """``(byte offset, line)`` of a text file from ``offset``, line endings kept, decoded one
    line at a time (a UTF-8 byte-order mark at the start dropped). An encoding whose newline is
    not one byte (UTF-16) is decoded whole, and offsets are None."""
    codec = _codec(encoding)
    try:
        if not line_aligned(encoding):
            for line in io.StringIO(path.read_bytes().decode(codec), newline=""):
                yield None, line
            return
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in (part for block in f for part in _LONE_CR.split(block) if part):
                try:
                    line = raw.decode(codec)
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"Data '{path}' is not valid {codec.upper()} (byte {offset + exc.start}); re-save it as "
                        f"{codec.upper()} or set data.encoding to its encoding (e.g. latin-1)."
                    ) from None
                if offset == 0 and line.startswith("\ufeff") and codec == "utf-8":
                    line = line[1:]
                yield offset, line
                offset += len(raw)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Data '{path}' is not valid {codec.upper()} (byte {exc.start}); re-save it as UTF-8 or set "
            "data.encoding to its encoding."
        ) from None
    except OSError as exc:
        raise DataError(f"Data '{path}' cannot be read: {exc.strerror}.") from None


def _as_dict(header, values) -> dict:
    """A CSV record as :class:`csv.DictReader` gives it (extra values under None, missing None)."""
    row = dict(zip(header, values))
    if len(values) > len(header):
        row[None] = values[len(header):]
    for name in header[len(values):]:
        row[name] = None
    return row


def _records(path: Path, encoding: str):
    """``(row number, byte offset, header, row)`` of a CSV / TSV / JSONL manifest, one row at a
    time; ``header`` is the CSV header (None for JSONL)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        n = 0
        for offset, line in _lines(path, encoding):
            if not line.strip():
                continue
            n += 1
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise DataError(f"Manifest '{path}' line {n} is not a JSON object; JSONL needs one object per line.")
            yield n, offset, None, row
        return
    lines = _lines(path, encoding)
    starts = []

    def text():  # the reader pulls exactly the lines of one record (quoted fields span lines)
        for offset, line in lines:
            starts.append(offset)
            yield line

    reader = csv.reader(text(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    header = tuple(next(reader, []))
    n = 0
    while True:
        before = len(starts)
        values = next(reader, None)
        if values is None:
            return
        if values:  # blank lines are skipped, as csv.DictReader skips them
            n += 1
            yield n, starts[before], header, _as_dict(header, values)


def first_rows(path, encoding: str = "utf-8", n: int = 1000) -> list[dict]:
    """The first ``n`` rows of a manifest (without reading the rest)."""
    rows = [row for _, _, _, row in islice(_records(Path(path), encoding), n)]
    if not rows:
        raise DataError(f"Manifest '{path}' has no rows.")
    return rows


def _manifest_rows(path: Path, text_columns, label_column, labelled, encoding, separator):
    """``(row, where)`` of each manifest row, ``where`` being ``(path, byte offset, format, CSV
    header, text columns)``."""
    records = _records(path, encoding)
    head = list(islice(records, 1000))
    first = [r for _, _, _, r in head]
    if not head:
        raise DataError(f"Manifest '{path}' has no rows.")
    if not text_columns:
        text_columns = text_columns_of(first, path, label_column)
    _check_columns(path, first, text_columns, label_column if labelled else None)
    line_word = "line" if path.suffix.lower() in (".jsonl", ".json") else "row"
    fmt = "jsonl" if line_word == "line" else path.suffix.lower().lstrip(".")
    columns, name = tuple(text_columns), str(path)  # one string for every row's ``where``
    for n, offset, header, row in chain(head, records):
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
        yield item, (name, offset, fmt, header, columns)


def _file_rows(files, encoding: str, labels=None):
    for i, f in enumerate(files):
        text = read_text_file(f, encoding).strip()
        if not text:
            raise DataError(f"Text file '{f}' is empty; remove it or add its text.")
        row = {"text": text, "path": str(f)}
        if labels is not None:
            row["label"] = labels[i]
        yield row, (row["path"], 0, "file", None, None)


def _line_rows(path: Path, encoding: str):
    found, name = False, str(path)
    for offset, line in _lines(path, encoding):
        if line.strip():
            found = True
            yield {"text": line.strip()}, (name, offset, "line", None, None)
    if not found:
        raise DataError(f"Text file '{path}' has no non-empty lines.")


def load_text(where, separator: str = "\n", encoding: str = "utf-8") -> str:
    """The text at ``where`` (from :func:`read_text_columns`), as :func:`read_text_rows` reads it."""
    path, offset, fmt, header, text_columns = where
    path = Path(path)
    if fmt == "file":
        return read_text_file(path, encoding).strip()
    lines = _lines(path, encoding, offset)
    if fmt == "line":
        return next(lines)[1].strip()
    if fmt == "jsonl":
        row = json.loads(next(lines)[1])
    else:
        values = next(csv.reader((line for _, line in lines), delimiter="\t" if fmt == "tsv" else ","))
        row = _as_dict(header, values)
    return join_columns(row, text_columns, separator)


def _rows(source, text_columns, label_column: str, labelled: bool, encoding: str, separator: str):
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
        return _line_rows(source, encoding)
    raise DataError(
        f"Data '{source}' is neither a class folder of .txt files nor a manifest "
        f"({', '.join(MANIFEST_SUFFIXES)}) with text and label columns."
    )


def read_text_rows(source, text_columns=("text",), label_column: str = "label", labelled: bool = True,
                   encoding: str = "utf-8", separator: str = "\n") -> list[dict]:
    """Rows ``{"text", "label", ...}`` from a manifest or a class-folder tree. An empty
    ``text_columns`` picks the column itself (:func:`text_columns_of`).

    Unlabelled (``labelled=False``) also accepts a folder of ``.txt`` files or a ``.txt`` file
    with one text per line.
    """
    return [row for row, _ in _rows(source, text_columns, label_column, labelled, encoding, separator)]


def read_text_columns(source, text_columns=("text",), label_column: str = "label", labelled: bool = True,
                      encoding: str = "utf-8", separator: str = "\n", stream: bool = False) -> tuple[list, dict]:
    """``(texts, columns)``: the texts of :func:`read_text_rows` in order, and its other fields
    as one list per column (``label`` among them when labelled; None where a row lacks a
    column), a value repeated across rows (a label, a domain) held once.

    With ``stream`` the texts are not kept, only where each one is: ``(path, byte offset,
    format, CSV header, text columns)`` for :func:`load_text` (every row is still read and
    checked), so what stays in memory is the manifest."""
    if stream and not line_aligned(encoding):
        raise DataError(f"Texts in {encoding} (data.encoding) cannot be streamed: a newline is not one byte. "
                        "Re-save the data as UTF-8, or set data.streaming: false.")
    texts, columns, pools = [], {}, {}
    for n, (row, at) in enumerate(_rows(source, text_columns, label_column, labelled, encoding, separator)):
        text = row.pop("text")
        texts.append(at if stream else text)
        for k, v in row.items():
            column = columns.get(k)
            if column is None:  # a column first seen here: None for the rows before
                column = columns[k] = [None] * n
            if isinstance(v, str):
                pool = pools.setdefault(k, {})
                v = pool.setdefault(v, v) if len(pool) < 1000 else pool.get(v, v)
            column.append(v)
        for column in columns.values():
            if len(column) == n:  # this row lacks the column
                column.append(None)
    return texts, columns


def text_bytes(source) -> int:
    """Size on disk of the texts of ``source`` (a manifest, a .txt file or a folder of them)."""
    source = Path(source)
    if source.is_file():
        return source.stat().st_size
    return sum(p.stat().st_size for p in source.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
