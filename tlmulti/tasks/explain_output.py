"""The files ``predict --explain DIR`` writes, for every task that explains: the folder, one
name per input (two inputs with one stem get ``-2``, ``-3``... instead of overwriting each other)
and one error line naming the file when a write fails."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tlmulti.errors import TlmultiError


def explain_folder(out_dir) -> Path:
    """``out_dir``, created; an error naming it when it cannot be."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TlmultiError(f"Cannot create the --explain folder '{out}' ({exc.strerror or exc}); give a folder "
                           "you can write to.") from None
    return out


@contextmanager
def writing(path: Path):
    """Writes inside the block fail with one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise TlmultiError(f"Cannot write '{path}' ({exc.strerror or exc}); free some space or give "
                           "another --explain folder.") from None


def stem_of(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", path.suffix):
        if suffix and name.lower().endswith(suffix.lower()):
            return name[: -len(suffix)] or name
    return name


def unique(stem: str, taken: set) -> str:
    name, n = stem, 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name.lower())
    return name
