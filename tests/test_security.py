"""What a received file can make tlmulti run (all offline, tiny models).

Every hostile SavedModel here has the variables of the benign one, and its graph writes a marker
file when it runs: a refusal must leave the marker absent and say so in one line. Covered: a
HubLayer handle in a received ``model.keras`` (a literal ``~`` folder in the current directory,
``..`` through a symbolic link, a store entry that is a symbolic link out of the store, relative
paths, a file in the store, changed files, a URL), ``tlmulti resume`` and ``tlmulti run`` of a
received run folder whose recipe names foreign ``backbone.weights``, and ``audio synth`` of
words that look like options.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests.builders import write_image_folder

SIZE = 16
HUB = "hubcnn.security"


def _saved_model(path, marker=None):
    """A TF2 SavedModel: (batch, 16, 16, 3) -> channel means @ kernel (3x4). With ``marker``, its
    graph also writes that file whenever it runs."""
    import tensorflow as tf

    class Features(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(np.eye(3, 4, dtype="float32"), name="kernel")

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        def __call__(self, x):
            if marker is not None:
                tf.io.write_file(str(marker), "ran")
            return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.kernel)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(Features(), str(path))
    return Path(path)


def _model_file(built_from, out, handle=None, sha256="keep"):
    """``model.keras`` of Input -> HubLayer(``built_from``), then its handle rewritten to
    ``handle`` and its sha256 to ``sha256`` ("keep": as recorded), as a hostile sender would."""
    from tlmulti.backbones.tfhub import build_tfhub_backbone

    model = build_tfhub_backbone(str(built_from), input_shape=(SIZE, SIZE, 3))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    if handle is not None:
        _rewrite_handle(out, handle, sha256)
    return out


def _rewrite_handle(file, handle, sha256="keep"):
    def edit(node):
        if isinstance(node, dict):
            if node.get("class_name") == "HubLayer":
                node["config"]["handle"] = handle
                if sha256 != "keep":
                    node["config"]["sha256"] = sha256
            for value in node.values():
                edit(value)
        elif isinstance(node, list):
            for value in node:
                edit(value)

    with zipfile.ZipFile(file) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(file, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _refused(file, marker, *why):
    """Loading ``file`` and calling the model is refused in one line, before the graph runs."""
    import tlmulti
    from tlmulti.errors import RunError

    with pytest.raises(RunError) as info:
        model = tlmulti.load_model(file)
        model(np.ones((1, SIZE, SIZE, 3), "float32"))  # only reached when the load was not refused
    message = str(info.value)
    assert not marker.exists(), "the foreign graph ran"
    assert "\n" not in message and "Refusing to load the SavedModel" in message, message
    for text in why:
        assert text in message, message
    return message


@pytest.fixture
def store():
    from tlmulti import paths

    folder = paths.weights_store()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------- model files (HubLayer handles)
def test_a_tilde_handle_loads_from_home_not_from_a_folder_named_tilde(tmp_path, monkeypatch):
    """The handle '~/.cache/tlmulti/weights/x' with a folder literally named '~' in the current
    directory: the store entry (under $HOME) does not exist, so it is refused; ./~ never loads."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TLMULTI_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    (home / ".cache" / "tlmulti" / "weights").mkdir(parents=True)
    received = tmp_path / "received"
    marker = tmp_path / "ran.txt"
    _saved_model(received / "~" / ".cache" / "tlmulti" / "weights" / "x", marker)
    file = _model_file(_saved_model(tmp_path / "benign"), received / "model.keras",
                       handle="~/.cache/tlmulti/weights/x", sha256=None)
    monkeypatch.chdir(received)
    _refused(file, marker, "~/.cache/tlmulti/weights/x",
             os.path.realpath(home / ".cache" / "tlmulti" / "weights" / "x"), "not a SavedModel folder")


def test_dotdot_through_a_symlink_is_resolved_as_the_file_system_does(tmp_path, monkeypatch, store):
    """'lnk/../R': read lexically it is the store entry, but the file system follows lnk first and
    lands outside the store. The handle resolves once, as the file system does, to a path without
    links or '..', which is what is checked (and refused) and what would be loaded."""
    base = Path(os.path.realpath(tmp_path))
    cwd = base / "received" / "cwd"
    cwd.mkdir(parents=True)
    target = base / "e" / "x" / "d1" / "d2"
    target.mkdir(parents=True)
    os.symlink(target, cwd / "lnk")
    rest = os.path.relpath(os.path.realpath(store) + "/x", cwd)
    handle = f"lnk/../{rest}"
    reached = Path(os.path.normpath(os.path.join(target.parent, rest)))
    assert not str(reached).startswith(os.path.realpath(store) + os.sep)
    marker = base / "ran.txt"
    _saved_model(reached, marker)
    file = _model_file(_saved_model(base / "benign"), cwd / "model.keras", handle=handle, sha256=None)
    monkeypatch.chdir(cwd)
    _refused(file, marker, str(reached), "--trust")


def test_dotdot_out_of_the_store_is_refused(tmp_path, store):
    marker = tmp_path / "ran.txt"
    _saved_model(tmp_path / "outside", marker)
    handle = str(store / "x" / ".." / ".." / ".." / os.path.relpath(tmp_path / "outside", store.parent.parent))
    assert os.path.realpath(handle) == os.path.realpath(tmp_path / "outside")
    file = _model_file(_saved_model(tmp_path / "benign"), tmp_path / "r" / "model.keras", handle=handle, sha256=None)
    _refused(file, marker, "--trust")


def test_a_store_entry_that_links_out_of_the_store_is_refused(tmp_path, store):
    marker = tmp_path / "ran.txt"
    _saved_model(tmp_path / "outside", marker)
    os.symlink(tmp_path / "outside", store / "x")
    file = _model_file(_saved_model(tmp_path / "benign"), tmp_path / "r" / "model.keras", handle=str(store / "x"),
                       sha256=None)
    _refused(file, marker, os.path.realpath(tmp_path / "outside"))


@pytest.mark.parametrize("handle", ["hostile", "./sub/../hostile"])
def test_a_relative_handle_outside_the_store_is_refused(handle, tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    (tmp_path / "sub").mkdir()
    _saved_model(tmp_path / "hostile", marker)
    file = _model_file(_saved_model(tmp_path / "benign"), tmp_path / "model.keras", handle=handle, sha256=None)
    monkeypatch.chdir(tmp_path)
    _refused(file, marker, handle, "--trust")


def test_a_file_in_the_store_and_changed_files_are_refused(tmp_path, store):
    marker = tmp_path / "ran.txt"
    (store / "afile").write_text("not a SavedModel")
    file = _model_file(_saved_model(tmp_path / "benign"), tmp_path / "a.keras", handle=str(store / "afile"),
                       sha256=None)
    _refused(file, marker, "not a SavedModel folder")
    _saved_model(store / "x")
    file = _model_file(store / "x", tmp_path / "b.keras")  # records the sha256 of store/x
    shutil.rmtree(store / "x")
    _saved_model(store / "x", marker)  # same variables, another graph
    _refused(file, marker, "sha256 differs")


def test_a_url_that_no_backbone_registers_is_refused(tmp_path):
    marker = tmp_path / "never.txt"
    benign = _saved_model(tmp_path / "benign")
    for handle in ("https://example.invalid/evil/1", f"file://{benign}"):
        file = _model_file(benign, tmp_path / "u.keras", handle=handle, sha256=None)
        _refused(file, marker, handle)


def test_a_store_folder_with_its_recorded_sha256_loads(tmp_path, store):
    import tlmulti

    marker = tmp_path / "ran.txt"
    _saved_model(store / "mine", marker)
    file = _model_file(store / "mine", tmp_path / "model.keras")
    marker.unlink(missing_ok=True)
    model = tlmulti.load_model(file)
    np.testing.assert_allclose(np.asarray(model(np.ones((1, SIZE, SIZE, 3), "float32"))), [[1, 1, 1, 0]])
    assert marker.exists()  # the user's own SavedModel runs


def test_trust_loads_a_foreign_saved_model(tmp_path):
    import tlmulti
    from tlmulti.backbones._saved_model import trusting_saved_models

    marker = tmp_path / "ran.txt"
    file = _model_file(_saved_model(tmp_path / "foreign", marker), tmp_path / "model.keras")
    marker.unlink(missing_ok=True)
    _refused(file, marker, "--trust")
    with trusting_saved_models():
        model = tlmulti.load_model(file)
    model(np.ones((1, SIZE, SIZE, 3), "float32"))
    assert marker.exists()


# ----------------------------------------------------------------- run folders: recipes
@pytest.fixture
def hub_backbone(tmp_path):
    """A registered TF-Hub backbone whose handle is a benign local SavedModel."""
    from tlmulti import registry

    registry._ensure_builtins()
    registry.register_backbone(
        HUB, source="tfhub", families=("vision",), handle=str(_saved_model(tmp_path / "registered")),
        input={"size": [SIZE, SIZE], "channels": 3, "normalization": "unit"}, layer_groups={"all": ["hub"]},
        description="benign test SavedModel", replace=True)
    yield HUB
    registry.unregister_backbone(HUB)


def _recipe(data, **backbone):
    from tlmulti.recipe import from_dict

    return from_dict({
        "task": "image_classification", "name": "sec", "seed": 0,
        "backbone": {"name": HUB, **backbone}, "head": {"pooling": "avg"},
        "data": {"train": str(data), "test": str(data), "val_split": 0.25, "batch_size": 4, "image_size": [SIZE, SIZE]},
        "phases": [{"name": "head", "epochs": 2, "learning_rate": 0.01}],
        "cache": {"disk": False}, "callbacks": {"verbose": 0}, "output": {"plots": False},
    })


def _cli(*args):
    from tlmulti.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_refusal(result, marker):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Refusing to load the SavedModel"), result.stderr
    assert "--trust" in lines[0] and "Traceback" not in result.output
    assert not marker.exists(), "the foreign graph ran"


def _received_run(tmp_path, monkeypatch, data, weights):
    """A run folder stopped after its first epoch whose recipe.yaml was then edited to name
    ``weights`` as backbone.weights (what a received run folder can say)."""
    import tlmulti
    from tlmulti.training import checkpoints

    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped after the first epoch")

    monkeypatch.setattr(checkpoints, "save", crashing)
    run = tmp_path / "received_run"
    with pytest.raises(RuntimeError):
        tlmulti.train(_recipe(data), out=run)
    monkeypatch.setattr(checkpoints, "save", real)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["backbone"]["weights"] = str(weights)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return run


def test_resume_of_a_received_run_refuses_foreign_backbone_weights(hub_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("TLMULTI_TRUST", "0")  # --trust sets it for the process; restored after the test
    data = write_image_folder(tmp_path / "img", per_class=6, size=(SIZE, SIZE))
    marker = tmp_path / "ran.txt"
    run = _received_run(tmp_path, monkeypatch, data, _saved_model(tmp_path / "foreign", marker))
    _one_line_refusal(_cli("resume", run), marker)
    result = _cli("resume", run, "--trust")
    assert result.exit_code == 0, result.output
    assert marker.exists() and json.loads((run / "run.json").read_text())["status"] == "finished"


def test_run_of_a_received_recipe_refuses_foreign_backbone_weights(hub_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("TLMULTI_TRUST", "0")
    data = write_image_folder(tmp_path / "img", per_class=6, size=(SIZE, SIZE))
    marker = tmp_path / "ran.txt"
    foreign = _saved_model(tmp_path / "foreign", marker)
    run = _received_run(tmp_path, monkeypatch, data, foreign)
    _one_line_refusal(_cli("run", run / "recipe.yaml", "--out", tmp_path / "again"), marker)
    assert not (tmp_path / "again").exists()
    # The user's own recipe file (outside a run folder) and --set on the command line stay trusted.
    mine = tmp_path / "mine.yaml"
    shutil.copy(run / "recipe.yaml", mine)
    assert _cli("run", mine, "--out", tmp_path / "mine").exit_code == 0
    assert marker.exists()
    marker.unlink()
    result = _cli("run", run / "recipe.yaml", "--set", f"backbone.weights={foreign}", "--out", tmp_path / "set")
    assert result.exit_code == 0, result.output
    assert marker.exists()
    marker.unlink()
    assert _cli("run", run / "recipe.yaml", "--trust", "--out", tmp_path / "trusted").exit_code == 0
    assert marker.exists()


def test_vision_train_of_a_received_recipe_follows_the_same_rule(hub_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("TLMULTI_TRUST", "0")
    data = write_image_folder(tmp_path / "img", per_class=6, size=(SIZE, SIZE))
    marker = tmp_path / "ran.txt"
    foreign = _saved_model(tmp_path / "foreign", marker)
    run = _received_run(tmp_path, monkeypatch, data, foreign)
    _one_line_refusal(_cli("vision", "train", run / "recipe.yaml", "--out", tmp_path / "again"), marker)
    result = _cli("vision", "train", run / "recipe.yaml", "--weights", foreign, "--out", tmp_path / "own")
    assert result.exit_code == 0, result.output
    assert marker.exists()
    marker.unlink()
    assert _cli("vision", "train", run / "recipe.yaml", "--trust", "--out", tmp_path / "trusted").exit_code == 0
    assert marker.exists()


def test_a_received_run_with_a_tilde_handle_is_refused_by_predict_evaluate_export(hub_backbone, tmp_path,
                                                                                  monkeypatch):
    import tlmulti

    monkeypatch.setenv("TLMULTI_TRUST", "0")
    data = write_image_folder(tmp_path / "img", per_class=6, size=(SIZE, SIZE))
    run = tlmulti.train(_recipe(data), out=tmp_path / "received_run").dir
    home = tmp_path / "home"
    (home / ".cache" / "tlmulti" / "weights").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TLMULTI_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    marker = tmp_path / "ran.txt"
    _saved_model(tmp_path / "~" / ".cache" / "tlmulti" / "weights" / "x", marker)
    _rewrite_handle(run / "model.keras", "~/.cache/tlmulti/weights/x", sha256=None)
    monkeypatch.chdir(tmp_path)
    image = next((data / "cat").glob("*.png"))
    _one_line_refusal(_cli("vision", "predict", run, image), marker)
    _one_line_refusal(_cli("vision", "evaluate", run, "--data", data), marker)
    _one_line_refusal(_cli("export", run, "--format", "saved_model", "--out", tmp_path / "exported"), marker)
    assert not (tmp_path / "exported").exists()


# ----------------------------------------------------------------- audio synth
@pytest.mark.skipif(not shutil.which("espeak-ng") or not shutil.which("flite"), reason="needs espeak-ng and flite")
def test_synth_speaks_words_that_look_like_options(tmp_path):
    import wave

    from tlmulti.synth import synthesize

    rows = synthesize(["--version", "-x"], tmp_path / "out", accents=["en-us"], variants=[""],
                      flite_voices=["kal"], jobs=2)
    assert sorted((r["label"], r["engine"]) for r in rows) == [
        ("--version", "espeak"), ("--version", "flite"), ("-x", "espeak"), ("-x", "flite")]
    for r in rows:
        with wave.open(str(tmp_path / "out" / r["path"])) as w:
            assert w.getnframes() > 1000  # spoken as text, not taken as an option
    result = _cli("audio", "synth", "--words=--version", "--accents", "en-us", "--variants", "",
                  "--flite-voices", "none", "--out", tmp_path / "cli")
    assert result.exit_code == 0, result.output
    assert "eSpeak NG text-to-speech" not in result.output
    assert list((tmp_path / "cli" / "--version").glob("*.wav"))
