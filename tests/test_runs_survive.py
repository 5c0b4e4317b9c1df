"""Runs that survive: checkpoints and resume, Ctrl-C / kill -9, determinism, the run card, weights
locks, atomic run folders, safe loading of run folders, and one-line errors (all offline)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import write_image_folder, write_tones

ROOT = Path(__file__).resolve().parents[1]


def _recipe(backbone, data, **extra):
    from tlmulti.recipe import from_dict

    recipe = {
        "task": "image_classification", "name": "t", "seed": 0, "deterministic": True,
        "backbone": {"name": backbone}, "head": {"pooling": "avg", "dropout": 0.2},
        "data": {"train": str(data), "test": str(data), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16],
                 "augment": {"flip": "horizontal"}},
        "phases": [{"name": "head", "epochs": 3, "learning_rate": 0.01},
                   {"name": "ft", "epochs": 3, "learning_rate": 0.003, "unfreeze": "top:2", "schedule": "cosine",
                    "warmup": 0.2}],
        "callbacks": {"early_stopping": {"patience": 5}, "verbose": 0}, "output": {"plots": False},
    }
    recipe.update(extra)
    return from_dict(recipe)


def _numbers(run_dir):
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    rows = (Path(run_dir) / "history.csv").read_text().splitlines()
    return m["test"]["accuracy"], m["test"]["loss"], m["val"]["loss"], rows


@pytest.fixture
def data(tmp_path):
    return write_image_folder(tmp_path / "img", per_class=8)


@pytest.fixture
def reference(tiny_backbone, data, tmp_path):
    import tlmulti

    tlmulti.train(_recipe(tiny_backbone, data), out=tmp_path / "reference")
    return _numbers(tmp_path / "reference")


class Crash(Exception):
    pass


# save calls: 1 = start, 2-4 = phase 0 epochs, 5 = between phases, 6-8 = phase 1 epochs, 9 = end
@pytest.mark.parametrize("point,where", [(1, "before the first epoch (feature cache)"), (3, "mid-phase, cached"),
                                         (5, "between phases"), (7, "mid-phase, fine-tuning"),
                                         (9, "after the last phase (evaluation or adaptation)")])
def test_resume_after_a_crash_gives_the_uninterrupted_run(point, where, tiny_backbone, data, reference, tmp_path,
                                                           monkeypatch):
    import tlmulti
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == point:
            raise Crash(where)

    monkeypatch.setattr(checkpoints, "save", crashing)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        tlmulti.train(_recipe(tiny_backbone, data), out=out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "Crash" in info["error"] and (out / "checkpoint").is_dir()
    assert not (out / "model.keras").exists()
    monkeypatch.setattr(checkpoints, "save", real)
    resume(out)
    acc, loss, val_loss, rows = _numbers(out)
    ref_acc, ref_loss, ref_val_loss, ref_rows = reference
    assert abs(acc - ref_acc) <= 0.005 and loss == pytest.approx(ref_loss, abs=1e-5)
    assert val_loss == pytest.approx(ref_val_loss, abs=1e-5)
    assert [r.split(",")[:2] for r in rows] == [r.split(",")[:2] for r in ref_rows]  # each epoch once
    assert json.loads((out / "run.json").read_text())["status"] == "finished" and not (out / "checkpoint").exists()


def test_determinism_gives_identical_metrics(tiny_backbone, data, reference, tmp_path):
    import tlmulti

    tlmulti.train(_recipe(tiny_backbone, data), out=tmp_path / "again")
    assert _numbers(tmp_path / "again") == reference


def _cli_script(tmp_path, data):
    """A training script that registers the tiny test backbone, then runs the CLI."""
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.builders import build_tiny_cnn\n"
        "from tlmulti import registry\n"
        "registry.register_backbone('tiny_cnn.test', source='builder', families=('vision',), builder=build_tiny_cnn,"
        " input={'size': [16, 16], 'channels': 3}, layer_groups={f'block{i}': [f'block{i}_.*'] for i in (1, 2, 3)})\n"
        "from tlmulti.cli import main\n"
        "main()\n")
    return [sys.executable, str(script)]


def _wait_for_epochs(out, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = out / "checkpoint" / "state.json"
        if state.exists():
            try:
                if len(json.loads(state.read_text())["history"]) >= n:
                    return
            except ValueError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_stopped_cli_run_is_kept_and_resumes(how, data, tmp_path, tlmulti_home):
    cmd = _cli_script(tmp_path, data)
    out = tmp_path / "run"
    # 120 short epochs (a few seconds in all): the signal lands while the first phase trains
    args = ["vision", "train", "--data", str(data), "--backbone", "tiny_cnn.test", "--set", "phases.0.epochs=120",
            "--set", "data.image_size=[16, 16]", "--set", "callbacks.early_stopping.enabled=false",
            "--set", "phases.0.cache_features=false", "--strategy", "fixed", "--out", str(out)]
    env = {**os.environ, "TLMULTI_HOME": str(tlmulti_home)}
    proc = subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_epochs(out, 2, proc)
    proc.send_signal(getattr(signal, how))
    stdout, stderr = proc.communicate(timeout=60)
    status = json.loads((out / "run.json").read_text())["status"]
    if how == "SIGINT":
        assert proc.returncode == 130 and status == "interrupted"
        assert f"tlmulti resume {out}" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL and status == "running"  # nothing could clean up
    again = subprocess.run(cmd + args, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and f"tlmulti resume {out}" in again.stderr  # never overwritten
    done = subprocess.run(cmd + ["resume", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    epochs = [int(r.split(",")[1]) for r in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 120


def test_run_card_records_versions_and_hashes_that_follow_the_inputs(tiny_backbone, data, tmp_path):
    import tlmulti

    def card(out, recipe):
        tlmulti.train(recipe, out=out)
        return json.loads((out / "run.json").read_text())

    first = card(tmp_path / "a", _recipe(tiny_backbone, data))
    assert first["status"] == "finished" and first["versions"]["tensorflow"] and first["versions"]["keras"]
    assert first["seed"] == 0 and first["deterministic"] is True and first["started"] and first["ended"]
    assert first["data"]["train"]["files"] == 16 and len(first["data"]["train"]["sha256"]) == 64
    same = card(tmp_path / "b", _recipe(tiny_backbone, data))
    assert same["data"] == first["data"] and same["recipe_sha256"] == first["recipe_sha256"]
    other_recipe = card(tmp_path / "c", _recipe(tiny_backbone, data, seed=1))
    assert other_recipe["recipe_sha256"] != first["recipe_sha256"] and other_recipe["data"] == first["data"]
    path = sorted(data.rglob("*.png"))[0]
    path.write_bytes(path.read_bytes() + b"\0")  # one byte more in one image
    changed = card(tmp_path / "d", _recipe(tiny_backbone, data))
    assert changed["data"]["train"]["sha256"] != first["data"]["train"]["sha256"]


def test_a_weights_lock_refuses_a_changed_file(tmp_path):
    import keras

    import tlmulti
    from tlmulti.errors import RunError
    from tlmulti.training.card import check_lock, weights_entries

    spec = tlmulti.get_backbone("vgg16.imagenet")
    weights = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    lock = tmp_path / "weights.lock"
    lock.write_text(json.dumps({"weights": weights_entries(spec, str(weights))}))
    check_lock(lock, spec, str(weights))  # the locked file passes
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    with pytest.raises(RunError, match=r"has sha256 .* which the lock .* does not pin"):
        check_lock(lock, spec, str(weights))


def _claim(out, barrier, results):
    from tlmulti.errors import RunError
    from tlmulti.runs import create_run_dir

    barrier.wait()
    try:
        create_run_dir(str(out), "x")
        results.put("won")
    except RunError:
        results.put("refused")


def test_two_trainings_never_get_the_same_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(40):
        out = tmp_path / f"run{trial}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_claim, args=(out, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(10)
        assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "won"], trial


def _hostile_saved_model(path, marker):
    import tensorflow as tf

    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            tf.io.write_file(str(marker), "ran")
            return x * 2.0

    tf.saved_model.save(Hostile(), str(path))


def test_a_run_folder_cannot_make_tlmulti_run_a_foreign_saved_model(tmp_path):
    import keras

    import tlmulti
    from tlmulti.errors import RunError
    from tlmulti.backbones._saved_model import trusting_saved_models
    from tlmulti.backbones.tfhub import build_tfhub_backbone

    marker = tmp_path / "ran.txt"
    _hostile_saved_model(tmp_path / "hostile", marker)
    with trusting_saved_models():  # what an attacker would do on their own machine
        model = build_tfhub_backbone(str(tmp_path / "hostile"), input_shape=(3,))
    model.save(tmp_path / "model.keras")
    marker.unlink(missing_ok=True)
    with pytest.raises(RunError, match="Refusing to load the SavedModel .*hostile.*--trust"):
        tlmulti.load_model(tmp_path / "model.keras")
    assert not marker.exists()
    with trusting_saved_models():  # --trust: the user said so
        loaded = tlmulti.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(loaded(np.ones((1, 3), "float32"))), [[2.0, 2.0, 2.0]])
    keras.backend.clear_session()


def test_a_lambda_layer_model_is_refused_in_one_line(tmp_path):
    import keras

    import tlmulti
    from tlmulti.errors import RunError

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 3)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(RunError, match="contains a Lambda layer"):
        tlmulti.load_model(tmp_path / "lambda.keras")
    (tmp_path / "truncated.keras").write_bytes((tmp_path / "lambda.keras").read_bytes()[:200])
    with pytest.raises(RunError, match="cannot be read as a Keras model.*truncated or damaged"):
        tlmulti.load_model(tmp_path / "truncated.keras")


def test_a_full_disk_while_saving_leaves_a_failed_run_and_no_model(tiny_backbone, data, tmp_path, monkeypatch):
    import errno

    import keras

    import tlmulti
    from tlmulti.errors import RunError

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    out = tmp_path / "full"
    with pytest.raises(RunError, match="No space left on device.*tlmulti resume"):
        tlmulti.train(_recipe(tiny_backbone, data), out=out)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "model.keras").exists() and not list(out.glob(".*keras"))


def test_user_mistakes_are_one_line_errors_without_tensorflow_noise(tmp_path):
    cli = [sys.executable, "-c", "from tlmulti.cli import main; main()"]
    tones = write_tones(tmp_path / "tones")
    for args, text in ((["audio", "train", "--data", str(tones), "--backbone", "audio_cnn.scratch", "--out",
                         "/proc/no/run"], "Cannot create run folder '/proc/no/run'"),
                       (["audio", "train", "--data", str(tones), "--epochs", "-1", "--out", str(tmp_path / "r")],
                        "must be 0 or more, got -1")):
        proc = subprocess.run(cli + args, capture_output=True, text=True)
        assert proc.returncode == 2 and text in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line: no CUDA/absl start-up log
    assert not (tmp_path / "r").exists()


def test_csv_with_a_byte_order_mark_and_exif_rotated_photos(tmp_path):
    from PIL import Image

    from tlmulti.data.images import load_image
    from tlmulti.data.manifest import read_manifest

    path = tmp_path / "m.csv"
    path.write_bytes("path,label\nx.png,cat\n".encode("utf-8-sig"))
    assert read_manifest(path, required=("path", "label"))[0] == {"path": "x.png", "label": "cat"}
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").shape[:2] == (40, 20)  # shown upright: taller than wide
