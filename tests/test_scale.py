"""Streaming from files, the disk feature cache, precision policies, bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.builders import (
    assert_same_weights, build_parts, image_recipe, make_tiny_bert_preset, register_tiny_bert, seg_recipe, text_recipe,
    tiny_texts, values, write_image_folder, write_seg_folder,
)


def _batches(ds):
    out = []
    for b in ds:
        parts = b if isinstance(b, tuple) else (b,)
        out.append([p.numpy() for p in parts])
    return out


def _assert_same(a, b):
    assert len(a) == len(b) and a
    for u, v in zip(a, b):
        for p, q in zip(u, v):
            np.testing.assert_array_equal(p, q)


def test_streamed_files_give_the_same_batches_as_decoding_them_first(tmp_path):
    import tensorflow as tf

    from tlmulti.data.images import image_files, load_files, stream_files
    from tlmulti.data.lazy import FileArray
    from tlmulti.data.pipeline import make_dataset, make_epoch_dataset

    files = image_files(write_image_folder(tmp_path / "im", per_class=9, size=(23, 17)))
    memory, _ = load_files(files, (16, 16), 3)
    streamed, origin = stream_files(files, (16, 16), 3)
    assert origin.tolist() == list(range(len(files)))
    assert isinstance(streamed, FileArray) and streamed.shape == memory.shape
    np.testing.assert_array_equal(np.asarray(streamed), memory)
    y = np.arange(len(files)).astype("int32")

    def flip(x, label, seeds):
        return tf.image.stateless_random_flip_left_right(x, seeds), label

    for make in (lambda x: make_epoch_dataset(x, y, 4, seed=5, epochs=3, initial_epoch=1, augment=flip),
                 lambda x: make_epoch_dataset(x, y, 5, seed=2, epochs=2),
                 lambda x: make_dataset(x, y, 4, shuffle=True, seed=3),
                 lambda x: make_dataset(x, None, 7)):
        _assert_same(_batches(make(memory)), _batches(make(streamed)))


def test_streaming_run_trains_exactly_like_the_in_memory_run(tiny_backbone, image_folder):
    import keras

    from tlmulti.data.lazy import FileArray
    from tlmulti.training.trainer import fine_tune

    results = []
    for streaming in (False, True):
        recipe = image_recipe(tiny_backbone, image_folder, phases=[
            {"name": "head", "epochs": 2, "learning_rate": 0.05},
            {"name": "top", "epochs": 1, "learning_rate": 0.01, "unfreeze": "top:1"}])
        recipe.data.streaming = streaming
        recipe.data.augment.flip = "horizontal"
        task, parts, train, val = build_parts(recipe)
        assert isinstance(train.x, FileArray) == streaming
        keras.utils.set_random_seed(1)
        history, _ = fine_tune(parts, task, train, val, recipe)
        results.append(([r["val_loss"] for r in history], values(parts.assemble().weights)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    assert_same_weights(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_limit_per_class_decodes_only_the_files_it_keeps(tiny_backbone, tmp_path, monkeypatch):
    from tlmulti.data import images

    decoded = []
    real = images.load_files

    def counting(paths, *args, **kwargs):
        decoded.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(images, "load_files", counting)
    recipe = image_recipe(tiny_backbone, write_image_folder(tmp_path / "im", per_class=30, size=(12, 12)))
    recipe.data.limit_per_class = 5
    recipe.data.streaming = False
    _, _, train, val = build_parts(recipe)
    assert len(train) + len(val) == 10  # two classes
    assert len(decoded) == 10 and len(set(decoded)) == 10


ROTATED = np.array([[0, 0, -2, 10], [1.5, 0, 0, 3], [0, -1, 0, 1], [0, 0, 0, 1.0]])  # not RAS+: reoriented


def _volume_folder(root):
    """Two classes of NIfTI volumes (one stored rotated), multi-page 16-bit TIFFs, a
    multi-frame DICOM and a photo."""
    import shutil

    import nibabel as nib
    import tifffile
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(3)
    for c, label in enumerate(("a", "b")):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(3):
            volume = (rng.random((9, 11, 4 + i)) * 3000 + 500 * c).astype(np.int16)
            nib.save(nib.Nifti1Image(volume, ROTATED if i == 1 else np.eye(4)), str(folder / f"v{i}.nii.gz"))
        tifffile.imwrite(folder / "stack.tif", rng.integers(0, 60000, (3, 10, 12)).astype(np.uint16),
                         photometric="minisblack")
        Image.fromarray(rng.integers(0, 255, (14, 10), dtype=np.uint8)).save(folder / "photo.png")
    shutil.copy(get_testdata_file("rtdose.dcm"), root / "a" / "dose.dcm")  # 15 frames
    return root


def _slices(folder) -> int:
    from tlmulti.data.medical import read_stack

    return sum(len(read_stack(p)[0]) for p in folder.rglob("*.*"))


def test_volumes_and_multiframe_files_stream_slice_by_slice(tiny_backbone, tmp_path, tlmulti_home, monkeypatch,
                                                            capsys):
    from tlmulti.data import images
    from tlmulti.data.lazy import FileArray

    folder = _volume_folder(tmp_path / "vol")
    built = {}
    for streaming in (False, True):
        recipe = image_recipe(tiny_backbone, folder)
        recipe.data.streaming = streaming
        recipe.data.normalize = "percentile"
        built[streaming] = build_parts(recipe)[2:]
    (train, val), (s_train, s_val) = built[False], built[True]
    assert isinstance(s_train.x, FileArray) and isinstance(train.x, np.ndarray)
    assert len(train) + len(val) == _slices(folder)
    for a, b in ((train, s_train), (val, s_val)):
        np.testing.assert_array_equal(a.x, np.asarray(b.x))
        np.testing.assert_array_equal(a.y, b.y)
        assert a.meta == b.meta
    stored = sorted(p.name for p in (tlmulti_home / "cache" / "slices").iterdir())
    assert len(stored) == 2 * 4 + 1  # one decoded copy per file with several images; photos stream as they are

    decoded = []
    real = images.load_slices
    monkeypatch.setattr(images, "load_slices", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    recipe = image_recipe(tiny_backbone, folder)
    recipe.data.streaming, recipe.data.normalize = True, "percentile"
    again = build_parts(recipe)[2]
    assert not decoded  # a later run reads the decoded copies
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(s_train.x))
    assert again.x.fingerprint() == s_train.x.fingerprint()

    copy = next((tlmulti_home / "cache" / "slices").glob("*/0.npy"))
    copy.write_bytes(copy.read_bytes()[:-7] + bytes(7))  # a damaged copy is found and decoded again
    decoded.clear()
    again = build_parts(recipe)[2]
    assert len(decoded) == 1 and "is corrupt (0.npy does not match its sha256)" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(s_train.x))

    changed = folder / "b" / "v0.nii.gz"
    import nibabel as nib

    decoded.clear()

    nib.save(nib.Nifti1Image(np.ones((9, 11, 4), np.int16), np.eye(4)), str(changed))
    os.utime(changed, ns=(1, 1))
    recipe = image_recipe(tiny_backbone, folder)
    recipe.data.streaming, recipe.data.normalize = True, "percentile"
    build_parts(recipe)
    assert [str(changed)] == decoded  # the changed file, and only it, is decoded again
    assert len(list((tlmulti_home / "cache" / "slices").iterdir())) == len(stored) + 1


def test_streaming_a_volume_without_disk_room_reads_it_into_memory(tiny_backbone, tmp_path, tlmulti_home,
                                                                   monkeypatch, capsys):
    from tlmulti.data import cache

    monkeypatch.setattr(cache, "fits", lambda nbytes, base=None: False)
    recipe = image_recipe(tiny_backbone, _volume_folder(tmp_path / "vol"))
    recipe.data.streaming = True
    _, _, train, val = build_parts(recipe)
    assert isinstance(train.x, np.ndarray) and len(train) + len(val) == _slices(tmp_path / "vol")
    assert "No room on the disk of" in capsys.readouterr().err
    assert not (tlmulti_home / "cache" / "slices").exists() or not any((tlmulti_home / "cache" / "slices").iterdir())


def _features(recipe):
    from tlmulti.training.features import frozen_features

    task, parts, train, val = build_parts(recipe)
    feats, info = frozen_features(parts.feature_model(), [train], recipe, verbose=0)
    return parts, train, feats[0], info


def test_disk_cache_is_reused_and_its_key_follows_every_input(tiny_backbone, image_folder, tlmulti_home):
    from tlmulti.data import cache

    recipe = image_recipe(tiny_backbone, image_folder)
    parts, train, first, info = _features(recipe)
    assert info["hits"] == [False] and isinstance(first, np.memmap) and first.dtype == np.float16
    expected = parts.feature_model().predict(np.asarray(train.x), verbose=0)
    np.testing.assert_allclose(first.astype(np.float32), expected, rtol=1e-3, atol=1e-3)

    _, _, again, info = _features(image_recipe(tiny_backbone, image_folder))  # a second run: no backbone pass
    assert info["hits"] == [True]
    np.testing.assert_array_equal(again, first)
    keys = {info["keys"][0]}

    def changed(recipe, what):
        _, _, feats, info = _features(recipe)
        assert info["hits"] == [False], what
        assert info["keys"][0] not in keys, what
        keys.add(info["keys"][0])

    changed(image_recipe(tiny_backbone, image_folder, seed=1), "other backbone weights")  # the builder draws them
    bigger = image_recipe(tiny_backbone, image_folder)
    bigger.data.image_size = [20, 20]
    changed(bigger, "image size")
    wide = image_recipe(tiny_backbone, image_folder)
    wide.cache.dtype = "float32"
    changed(wide, "stored dtype")
    streamed = image_recipe(tiny_backbone, image_folder)
    streamed.data.streaming = True
    changed(streamed, "files rather than arrays")
    victim = sorted(image_folder.rglob("*.png"))[0]
    from PIL import Image

    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(victim)
    changed(image_recipe(tiny_backbone, image_folder), "an image file rewritten")
    streamed = image_recipe(tiny_backbone, image_folder)
    streamed.data.streaming = True
    changed(streamed, "an image file rewritten, streamed")
    os.utime(victim, ns=(1, 1))
    changed(streamed, "a file's modification time")
    assert len(cache.entries()) == len(keys)


def test_a_corrupt_cache_entry_is_detected_and_rebuilt(tiny_backbone, image_folder, tlmulti_home, capsys):
    from tlmulti.data import cache

    recipe = image_recipe(tiny_backbone, image_folder)
    _, _, first, info = _features(recipe)
    kept = np.array(first)
    entry = cache.root() / info["keys"][0]
    del first
    blob = bytearray((entry / "0.npy").read_bytes())
    blob[-3] ^= 0xFF
    (entry / "0.npy").write_bytes(bytes(blob))
    _, _, rebuilt, info = _features(recipe)
    assert "is corrupt (0.npy does not match its sha256); deleting it" in capsys.readouterr().err
    assert info["hits"] == [False]
    np.testing.assert_array_equal(np.asarray(rebuilt), kept)
    (entry / "meta.json").write_text("{")
    _, _, _, info = _features(recipe)
    assert info["hits"] == [False] and "meta.json unreadable" in capsys.readouterr().err
    _, _, _, info = _features(recipe)
    assert info["hits"] == [True]


def test_cache_cli_lists_and_clears(tiny_backbone, image_folder, tlmulti_home):
    from click.testing import CliRunner

    from tlmulti.cli import main
    from tlmulti.data import cache

    from tlmulti.data import stacks

    _, _, _, info = _features(image_recipe(tiny_backbone, image_folder))
    volume = image_folder / "ct.nii.gz"
    volume.write_bytes(b"stands for a volume")
    stacks.stored(volume, {"normalize": "auto"}, lambda: [np.zeros((3, 4, 4, 1), np.uint8)])
    result = CliRunner().invoke(main, ["cache", "list"])
    assert result.exit_code == 0 and info["keys"][0] in result.output and "tiny_cnn.test" in result.output
    assert "slices of ct.nii.gz" in result.output and "2 entries" in result.output
    result = CliRunner().invoke(main, ["cache", "clear", "0" * 32])
    assert result.exit_code != 0 and "No cache entry 000" in result.output
    result = CliRunner().invoke(main, ["cache", "clear", info["keys"][0]])
    assert result.exit_code == 0 and "Deleted 1 cache entry" in result.output
    assert [m["description"]["file"] for m in cache.entries()] == [str(volume)]
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 0 and "Deleted 1 cache entry" in result.output
    assert cache.entries() == []


def test_a_second_run_reads_the_cache_and_trains_the_same(tiny_backbone, image_folder, tlmulti_home, tmp_path):
    import tlmulti

    runs = []
    for i in range(2):
        recipe = image_recipe(tiny_backbone, image_folder, phases=[{"name": "head", "epochs": 2, "learning_rate": 0.05}])
        runs.append(tlmulti.train(recipe, out=tmp_path / f"run{i}"))
    assert runs[0].metrics["phases"][0]["cache_hits"] == [False, False]
    assert runs[1].metrics["phases"][0]["cache_hits"] == [True, True]
    assert runs[0].metrics["val"]["accuracy"] == runs[1].metrics["val"]["accuracy"]
    np.testing.assert_allclose([r["loss"] for r in runs[0].history], [r["loss"] for r in runs[1].history], rtol=1e-5)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_builds_and_trains_on_cpu(tiny_backbone, image_folder, tmp_path, precision):
    import keras

    import tlmulti

    recipe = image_recipe(tiny_backbone, image_folder, precision=precision, phases=[
        {"name": "head", "epochs": 1, "learning_rate": 0.05},
        {"name": "all", "epochs": 1, "learning_rate": 0.01, "unfreeze": "all"}])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    assert keras.config.dtype_policy().name == "float32"  # put back after the run
    policies = {l.dtype_policy.name for l in run.model.layers if hasattr(l, "dtype_policy")}
    assert precision in policies
    assert run.model.output.dtype == "float32"  # the output layer stays float32
    assert all(np.isfinite(r["loss"]) for r in run.history) and len(run.history) == 2
    assert f"precision: {precision}" in (run.dir / "recipe.yaml").read_text()


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from PIL import Image
    from pathlib import Path
    root = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(int(sys.argv[2])):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    import keras
    import tlmulti
    from tlmulti.tasks import make_task
    from tests.builders import register_tiny_cnn
    register_tiny_cnn("tiny_cnn.test")
    recipe = tlmulti.recipe.from_dict({"task": "image_classification", "name": "m", "backbone": {"name": "tiny_cnn.test"},
        "data": {"train": str(root), "val_split": 0.1, "batch_size": 64, "image_size": [160, 160],
                 "streaming": sys.argv[3] == "stream"},
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}})
    task = make_task(recipe)
    task.build(["a", "b"])  # TensorFlow and Keras loaded: the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = tlmulti.train(recipe, out=root.parent / "run")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (peak - base) / 1024, "n": run.metrics["data"]["train"]}))
""")


def _growth(tmp_path, mode: str, per_class: int) -> float:
    env = {**os.environ, "TLMULTI_HOME": str(tmp_path / "home"), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / mode / "data"), str(per_class), mode],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


def test_memory_of_a_streaming_run_stays_bounded_over_many_small_files(tmp_path):
    # 4,000 files decode to 4,000 x 160 x 160 x 3 bytes = 293 MiB of pixels; decoded up front, the run
    # grows by about 1.2 GiB (the pixels, their tensor copy, batches); streamed by about 0.2 GiB
    # (compiled functions, prefetched batches), whatever the number of files.
    growth = _growth(tmp_path, "stream", 2000)
    assert growth < 450, f"streaming run grew by {growth:.0f} MiB"


def test_speech_synthesis_shows_progress(tmp_path, monkeypatch, capsys):
    from tlmulti import synth

    monkeypatch.setattr(synth, "_run", lambda utt: None)  # the engines' output is not what is tested
    rows = synth.synthesize(["yes", "no"], tmp_path, flite_voices=(), repeats=1)  # 2 words x 8 accents x 16
    out = capsys.readouterr().out
    assert len(rows) == 256
    assert f"Synthesising speech into {tmp_path}: 256" in out and "256/256" in out


def test_building_a_dataset_shows_progress(tmp_path, capsys):
    import gzip

    from tlmulti.datasets import fashion_mnist

    rng = np.random.default_rng(0)
    for split, n in (("train", 2500), ("t10k", 20)):
        labels = np.arange(n) % 10
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes(16) + rng.integers(0, 255, (n, 28, 28), dtype=np.uint8).tobytes())
        with gzip.open(tmp_path / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes(8) + labels.astype(np.uint8).tobytes())
    fashion_mnist.build(tmp_path / "out", train_per_class=250, test_per_class=2, source=tmp_path)
    out = capsys.readouterr().out
    assert "Writing train images: 2500" in out and "2500/2500" in out
    assert "Writing test images" not in out  # 20 images: too few for a progress line
    assert len(list((tmp_path / "out" / "train").rglob("*.png"))) == 2500


def test_segmentation_tiles_stream_as_they_are_cut_in_memory(tiny_backbone, tmp_path):
    import tlmulti
    from tlmulti.data.lazy import FileArray
    from tlmulti.tasks import make_task

    data = {split: write_seg_folder(tmp_path / split, n, size=(30, 37), seed=k)
            for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2)))}
    for tile in ("[16, 16]", "[]"):  # tiles, and whole images resized to the network input
        splits = {}
        for streaming in ("false", "true"):
            recipe = seg_recipe(tiny_backbone, data, **{"data.streaming": streaming, "data.tile": tile,
                                                         "data.class_weight": "balanced"})
            task = make_task(recipe)
            train, val, test = task.load_splits()
            splits[streaming] = (task, train, val, test)
        task, *streamed = splits["true"]
        assert isinstance(streamed[0].x, FileArray) and isinstance(streamed[0].y, FileArray)
        for a, b in zip(splits["false"][1:], streamed):
            np.testing.assert_array_equal(a.x, np.asarray(b.x))
            np.testing.assert_array_equal(a.y, np.asarray(b.y))
            assert a.meta == b.meta
        assert splits["false"][0].input_summary(splits["false"][1]) == task.input_summary(streamed[0])
        task.class_weight(streamed[0])
        splits["false"][0].class_weight(splits["false"][1])
        assert task._pixel_weights == splits["false"][0]._pixel_weights

    runs = {}
    for streaming in ("false", "true"):  # flips and quarter turns on streamed tiles and masks
        recipe = seg_recipe(tiny_backbone, data, **{"data.streaming": streaming, "cache.disk": "false"})
        runs[streaming] = tlmulti.train(recipe, out=tmp_path / f"run_{streaming}")
    streamed, in_memory = runs["true"], runs["false"]
    np.testing.assert_allclose([r["val_loss"] for r in streamed.history], [r["val_loss"] for r in in_memory.history],
                               rtol=1e-4)
    assert streamed.metrics["test"]["mean_dice"] == pytest.approx(in_memory.metrics["test"]["mean_dice"], abs=1e-4)


def test_segmentation_volumes_stream_from_their_decoded_slices(tiny_backbone, tmp_path, tlmulti_home):
    import nibabel as nib

    from tlmulti.data.lazy import FileArray
    from tlmulti.tasks import make_task

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(2):
            labels = np.zeros((20, 23, 5), np.uint8)
            labels[4:9, 5:12, 1:] = 1
            affine = ROTATED if i else np.eye(4)
            nib.save(nib.Nifti1Image((rng.random((20, 23, 5)) * 900).astype(np.float32), affine),
                     str(tmp_path / split / "images" / f"v{i}.nii.gz"))
            nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / split / "masks" / f"v{i}.nii.gz"))
    data = {s: tmp_path / s for s in ("train", "val", "test")}
    splits = {}
    for streaming in ("false", "true"):
        recipe = seg_recipe(tiny_backbone, data, **{"data.streaming": streaming, "data.skip_empty_slices": "true"})
        splits[streaming] = make_task(recipe).load_splits()
    for a, b in zip(splits["false"], splits["true"]):
        assert isinstance(b.x, FileArray) and isinstance(b.y, FileArray)
        np.testing.assert_array_equal(a.x, np.asarray(b.x))
        np.testing.assert_array_equal(a.y, np.asarray(b.y))
        assert a.meta == b.meta
    assert len(list((tlmulti_home / "cache" / "slices").iterdir())) == 6  # each volume with its mask, once

    runs = {}
    for streaming in ("false", "true"):
        recipe = seg_recipe(tiny_backbone, data, **{"data.streaming": streaming, "cache.disk": "false",
                                                     "phases.0.epochs": "2"})
        runs[streaming] = tlmulti_train(recipe, tmp_path / f"run_{streaming}")
    np.testing.assert_allclose([r["val_loss"] for r in runs["true"].history],
                               [r["val_loss"] for r in runs["false"].history], rtol=1e-4)


def tlmulti_train(recipe, out):
    import tlmulti

    return tlmulti.train(recipe, out=out)


EPOCHS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from tlmulti.data.pipeline import make_epoch_dataset
    x = np.random.default_rng(0).integers(0, 255, (2000, 160, 160, 3), dtype=np.uint8)  # 154 MB in memory
    y = np.arange(2000) % 10
    make_epoch_dataset(x[:8], y[:8], 4, seed=0, epochs=1)  # TensorFlow loaded: the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i, _ in enumerate(make_epoch_dataset(x, y, 32, seed=0, epochs=int(sys.argv[1]))):
        if i == 70:  # into the second epoch
            break
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""")


def test_in_memory_training_data_is_held_once_whatever_the_number_of_epochs():
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    growth = {}
    for epochs in (2, 20):
        out = subprocess.run([sys.executable, "-c", EPOCHS_SCRIPT, str(epochs)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        growth[epochs] = float(out.stdout.strip().splitlines()[-1])
    assert growth[20] - growth[2] < 100, growth  # one copy per epoch would add 18 x 154 MB


def _text_sources(root):
    """The same labelled texts as a CSV (byte-order mark, CRLF, quoted fields spanning lines,
    an old-Mac CR file), a TSV, JSONL and class folders of .txt files."""

    rows = tiny_texts(24, 0)
    rows[3] = ("Line one,\r\nline two \"quoted\"\nand þriðja línan — ünïcode", rows[3][1], rows[3][2])
    root.mkdir(parents=True)
    lines = ["text,label,domain"] + ['"' + t.replace('"', '""') + f'",{label},{d}' for t, label, d in rows]
    (root / "bom_crlf.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    plain = [r for i, r in enumerate(rows) if i != 3]
    (root / "mac.csv").write_bytes("\r".join(["text,label,domain"] + [f"{t},{label},{d}" for t, label, d in plain]).encode())
    (root / "rows.tsv").write_text("\n".join(["text\tlabel\tdomain"] + ["\t".join(r) for r in plain]) + "\n")
    (root / "rows.jsonl").write_text("\n".join(json.dumps({"text": t, "label": label, "domain": d}, ensure_ascii=False)
                                               for t, label, d in rows) + "\n\n")
    for i, (t, label, _) in enumerate(rows):
        (root / "folder" / label).mkdir(parents=True, exist_ok=True)
        (root / "folder" / label / f"{i:02d}.txt").write_text(t + "\n")
    return rows


def test_texts_stream_from_their_files_as_they_are_read_into_memory(tmp_path, tlmulti_home):
    from tlmulti import registry
    from tlmulti.data.lazy import FileArray
    from tlmulti.data.pipeline import make_dataset
    from tlmulti.tasks import make_task

    rows = _text_sources(tmp_path / "t")
    register_tiny_bert(make_tiny_bert_preset(tmp_path / "preset"))
    try:
        for name in ("bom_crlf.csv", "mac.csv", "rows.tsv", "rows.jsonl", "folder"):
            read = {}
            for streaming in ("false", "true"):
                recipe = text_recipe(tmp_path / "t" / name, tmp_path / "t" / name, **{"data.streaming": streaming})
                read[streaming] = make_task(recipe).read(recipe.data.train)
            memory, streamed = read["false"], read["true"]
            assert isinstance(streamed.x, FileArray) and not isinstance(memory.x, FileArray), name
            assert list(np.asarray(streamed.x)) == list(memory.x), name
            assert streamed.meta == memory.meta and np.array_equal(streamed.y, memory.y), name
            expected = [t for i, (t, _, _) in enumerate(rows) if name in ("bom_crlf.csv", "rows.jsonl", "folder")
                        or i != 3]
            assert sorted(memory.x) == sorted(expected), name
            batches = [b.numpy().tolist() for b in make_dataset(streamed.x, None, 5)]
            assert [t.decode() for b in batches for t in b] == list(memory.x), name

        runs = {}
        for streaming in ("false", "true"):  # a frozen phase on cached features, then the encoder fine-tuned
            recipe = text_recipe(tmp_path / "t" / "bom_crlf.csv", tmp_path / "t" / "rows.jsonl",
                                 **{"data.streaming": streaming, "phases.0.epochs": 2, "phases.1.epochs": 2,
                                    "cache.disk": "false"})
            import tlmulti

            runs[streaming] = tlmulti.train(recipe, out=tmp_path / f"run_{streaming}")
        np.testing.assert_allclose([r["val_loss"] for r in runs["true"].history],
                                   [r["val_loss"] for r in runs["false"].history], rtol=1e-5)
        assert runs["true"].metrics["test"]["accuracy"] == runs["false"].metrics["test"]["accuracy"]
    finally:
        registry.unregister_backbone("tiny_bert.test")


def test_utf16_texts_are_read_into_memory_under_auto_and_refused_when_streaming_is_forced(
        tmp_path, tlmulti_home, monkeypatch):
    from click.testing import CliRunner

    from tlmulti import registry
    from tlmulti.cli import main
    from tlmulti.data.lazy import FileArray
    from tlmulti.tasks import make_task

    monkeypatch.setattr("tlmulti.data.lazy.STREAM_BYTES", 0)  # auto streams anything that can be streamed
    rows = tiny_texts(12, 0)
    lines = "\n".join(["text,label"] + [f"{t},{label}" for t, label, _ in rows]) + "\n"
    (tmp_path / "utf8.csv").write_text(lines, encoding="utf-8")
    (tmp_path / "utf16.csv").write_text(lines, encoding="utf-16")
    register_tiny_bert(make_tiny_bert_preset(tmp_path / "preset"))
    try:
        utf8 = make_task(text_recipe(tmp_path / "utf8.csv", tmp_path / "utf8.csv")).read(str(tmp_path / "utf8.csv"))
        assert isinstance(utf8.x, FileArray)
        recipe = text_recipe(tmp_path / "utf16.csv", tmp_path / "utf16.csv", **{"data.encoding": "utf-16"})
        utf16 = make_task(recipe).read(recipe.data.train)
        assert not isinstance(utf16.x, FileArray)
        assert list(utf16.x) == list(np.asarray(utf8.x)) and np.array_equal(utf16.y, utf8.y)

        out = tmp_path / "run"
        result = CliRunner().invoke(main, ["text", "train", "--data", str(tmp_path / "utf16.csv"),
                                           "--backbone", "tiny_bert.test", "--set", "data.encoding=utf-16",
                                           "--set", "data.streaming=true", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "cannot be streamed" in result.output and "UTF-8" in result.output
        assert "Traceback" not in result.output and not out.exists()
    finally:
        registry.unregister_backbone("tiny_bert.test")
