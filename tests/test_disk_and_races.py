"""Full disks and races: exports swapped in only when complete, a full disk during a run, a cache
entry or a weights conversion (on a real tmpfs when the test may mount one, else by injecting
ENOSPC at the write), atomic take-over by ``tlmulti resume``, partial cache entries, damaged run
folders and checkpoints, and the feature cache's meta.json under concurrent readers."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import write_image_folder

ONE_LINE = "\n"


def _recipe(backbone, data, **extra):
    from tlmulti.recipe import from_dict

    recipe = {
        "task": "image_classification", "name": "t", "seed": 0, "deterministic": True,
        "backbone": {"name": backbone}, "head": {"pooling": "avg"},
        "data": {"train": str(data), "test": str(data), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16]},
        "phases": [{"name": "head", "epochs": 2, "learning_rate": 0.01},
                   {"name": "ft", "epochs": 2, "learning_rate": 0.003, "unfreeze": "top:2"}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False},
    }
    recipe.update(extra)
    return from_dict(recipe)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _status(run_dir) -> str:
    return json.loads((Path(run_dir) / "run.json").read_text())["status"]


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".*") if ".tmp" in p.name or ".partial" in p.name
                  or p.name.endswith(".old"))


def _one_line(message: str) -> None:
    assert ONE_LINE not in message.strip() and len(message) < 600, message


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    return tmp_path_factory.mktemp("disk_races")


@pytest.fixture
def tiny(module_home):
    from tests.builders import register_tiny_cnn
    from tlmulti import registry

    name = register_tiny_cnn("tiny_cnn.disk")
    yield name, write_image_folder(module_home / "img", per_class=8) if not (module_home / "img").exists() \
        else module_home / "img"
    registry.unregister_backbone(name)


@pytest.fixture(scope="module")
def finished_run(module_home):
    """A finished tiny run (copied by the tests that damage it)."""
    import tlmulti
    from tests.builders import register_tiny_cnn
    from tlmulti import registry

    name = register_tiny_cnn("tiny_cnn.disk")
    data = module_home / "img" if (module_home / "img").exists() else write_image_folder(module_home / "img", per_class=8)
    out = module_home / "finished"
    tlmulti.train(_recipe(name, data), out=out)
    registry.unregister_backbone(name)
    return out


@pytest.fixture(scope="module")
def disk_full_run(module_home):
    """A run whose 4th checkpoint write hit ENOSPC (injected into np.savez): kept as it failed."""
    import tlmulti
    from tests.builders import register_tiny_cnn
    from tlmulti import registry
    from tlmulti.errors import DiskFullError
    from tlmulti.training import checkpoints

    name = register_tiny_cnn("tiny_cnn.disk")
    data = module_home / "img" if (module_home / "img").exists() else write_image_folder(module_home / "img", per_class=8)
    out = module_home / "disk_full"
    real, calls = np.savez, []

    def savez(path, **arrays):
        if Path(path).name == "weights.npz":
            calls.append(1)
            if len(calls) == 4:
                Path(path).write_bytes(b"PK\x03\x04 half")
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, **arrays)

    checkpoints.np.savez = savez
    try:
        with pytest.raises(DiskFullError) as caught:
            tlmulti.train(_recipe(name, data), out=out)
    finally:
        checkpoints.np.savez = real
        registry.unregister_backbone(name)
    return out, str(caught.value)


def _copy(run_dir, tmp_path, name="copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


# 1. export --overwrite: the previous export is replaced only by a complete new one


def test_export_overwrite_with_a_damaged_run_keeps_the_previous_export(finished_run, tmp_path):
    from tlmulti.errors import RunError
    from tlmulti.export import export_run

    run = _copy(finished_run, tmp_path, "run")
    out = export_run(run, "saved_model", tmp_path / "export")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    damages = {"run.json": lambda: (run / "run.json").write_text("{not json"),
               "model.keras": lambda: (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:300])}
    for name, damage in damages.items():
        kept = (run / name).read_bytes()
        damage()
        with pytest.raises(RunError) as caught:
            export_run(run, "saved_model", out, overwrite=True)
        _one_line(str(caught.value))
        assert name in str(caught.value) or "cannot be read" in str(caught.value)
        after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before, f"the previous export changed after a damaged {name}"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
        (run / name).write_bytes(kept)
    export_run(run, "saved_model", out, overwrite=True)  # the run repaired: replaced, nothing left aside
    assert (out / "export.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]


def test_an_export_finished_by_another_process_meanwhile_gives_one_clear_error(finished_run, tmp_path, monkeypatch):
    from tlmulti import export as export_module
    from tlmulti.errors import RunError

    first = export_module.export_run(finished_run, "saved_model", tmp_path / "first")
    real = export_module._swap

    def other_export_wins(tmp, out, overwrite):  # the other export renames its folder in first
        shutil.copytree(first, out)
        return real(tmp, out, overwrite)

    monkeypatch.setattr(export_module, "_swap", other_export_wins)
    with pytest.raises(RunError, match="written by another export running at the same time.*--overwrite") as caught:
        export_module.export_run(finished_run, "saved_model", tmp_path / "raced")
    _one_line(str(caught.value))
    assert (tmp_path / "raced" / "export.json").is_file()  # the winner's export is complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raced")]


def _fake_export(folder: Path, tag: str) -> Path:
    folder.mkdir()
    (folder / "model.bin").write_bytes(os.urandom(2048))
    (folder / "export.json").write_text(json.dumps({"tag": tag}))
    return folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_export_swaps(tmp_path, overwrite):
    """24 exports finishing at once into one --out: without --overwrite exactly one wins and the
    others get one clear line; with it, --out always ends as one complete export, nothing aside."""
    from tlmulti.errors import RunError
    from tlmulti.export import _swap

    for trial in range(5):
        out = tmp_path / f"out{trial}"
        if overwrite:
            _fake_export(out, "previous")
        tmps = [_fake_export(tmp_path / f".out{trial}.partial-{i}", str(i)) for i in range(24)]
        barrier, results = threading.Barrier(len(tmps)), []

        def swap(tmp):
            barrier.wait()
            try:
                _swap(tmp, out, overwrite)
                results.append("won")
            except RunError as exc:
                _one_line(str(exc))
                results.append("refused")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        threads = [threading.Thread(target=swap, args=(t,)) for t in tmps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if not overwrite:
            assert sorted(results).count("won") == 1 and len(results) == 24, (trial, results)
        else:
            assert results.count("won") >= 1
        tag = json.loads((out / "export.json").read_text())["tag"]
        assert tag != "previous" and sorted(p.name for p in out.iterdir()) == ["export.json", "model.bin"]
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".out{trial}")]


# 2. full disks


def test_a_full_disk_mid_run_fails_resumably_in_one_line_and_resume_finishes(disk_full_run, tiny, tmp_path):
    from tlmulti.training.trainer import resume

    original, message = disk_full_run
    _one_line(message)
    assert message.startswith("No space left on device for the checkpoint in ")
    assert "mounted at '" in message and "needs about" in message and f"tlmulti resume {original}" in message
    run = _copy(original, tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "DiskFullError" in info["error"]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert len(state["history"]) == 2  # the last good checkpoint: after the head phase (save 3 of 4)
    assert _leftovers(original) == [] and not (original / ".tlmulti-run").exists()
    resume(run)  # space is back
    assert _status(run) == "finished" and (run / "model.keras").is_file() and not (run / "checkpoint").exists()
    rows = (run / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["head", "1"], ["head", "2"], ["ft", "3"], ["ft", "4"]]


def test_a_full_disk_at_the_first_checkpoint_leaves_a_folder_a_new_run_reuses(tiny, tmp_path, monkeypatch):
    import tlmulti
    from tlmulti.errors import DiskFullError
    from tlmulti.runs import create_run_dir
    from tlmulti.training import checkpoints

    def full(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.np, "savez", full)
    out = tmp_path / "first"
    with pytest.raises(DiskFullError, match="No space left on device.*start the run again") as caught:
        tlmulti.train(_recipe(*tiny), out=out)
    _one_line(str(caught.value))
    assert not out.exists() or not any(out.iterdir())
    assert create_run_dir(out, "t") == out  # the same --out is not refused


def test_a_run_that_stopped_before_its_first_checkpoint_is_no_dead_end(tmp_path):
    """Status 'running', no checkpoint, its process gone (killed): resume says how to start it
    again in the same folder, and a new run there takes the folder."""
    from tlmulti.errors import RunError
    from tlmulti.runs import create_run_dir, take_over

    out = tmp_path / "stopped"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "running", "classes": ["a", "b"]}))
    (out / "recipe.yaml").write_text("task: image_classification\n")
    (out / "splits.csv").write_text("path,split\n")
    (out / ".tlmulti-run").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with pytest.raises(RunError, match=rf"no checkpoint .*tlmulti run {out}/recipe.yaml' and --out {out} "
                                       r"\(the folder is reused\)"):
        take_over(out)
    assert create_run_dir(out, "t") == out and sorted(p.name for p in out.iterdir()) == [".tlmulti-run"]
    (out / "trained.txt").write_text("work")  # anything else in it: never taken
    (out / "run.json").write_text(json.dumps({"status": "failed"}))
    (out / ".tlmulti-run").unlink()
    with pytest.raises(RunError, match="holds a failed run"):
        create_run_dir(out, "t")
    assert (out / "trained.txt").exists()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (needs root); skipped where it cannot be mounted (the injection tests cover it)."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "3m"):
        pytest.skip("cannot mount a tmpfs here; the ENOSPC injection tests cover this")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=20)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the disk."""
    filler = disk / "filler.bin"
    size = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(size, 1))
    return filler


@pytest.mark.parametrize("checked", [True, False], ids=["free-space-check", "real-ENOSPC"])
def test_a_run_on_a_small_tmpfs_fills_it_then_resumes(checked, small_disk, tiny, monkeypatch, capsys):
    """--out on a real 3 MB tmpfs, filled during the run (before the 3rd checkpoint): the
    free-space check (or, with the check disabled, the real ENOSPC of the write) fails the run in
    one line; with the space freed, resume finishes it there."""
    import tlmulti
    from tlmulti import paths
    from tlmulti.errors import DiskFullError
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    real, calls = checkpoints.save, []

    def filling(run_dir, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            _fill(small_disk, 4096)
        return real(run_dir, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save", filling)
    if not checked:
        monkeypatch.setattr(paths, "check_free", lambda *a, **k: None)
    out = small_disk / "run"
    with pytest.raises(DiskFullError) as caught:
        tlmulti.train(_recipe(*tiny), out=out)
    message = str(caught.value)
    _one_line(message)
    assert f"mounted at '{small_disk}'" in message and f"tlmulti resume {out}" in message
    assert message.startswith(f"No space left on device for the checkpoint in '{out}'") and "needs about" in message
    assert _status(out) == "failed" and (out / "checkpoint" / "state.json").is_file()
    assert _leftovers(small_disk) == []
    (small_disk / "filler.bin").unlink()
    monkeypatch.setattr(checkpoints, "save", real)
    resume(out)
    assert _status(out) == "finished" and (out / "model.keras").is_file()


@pytest.mark.parametrize("checked", [True, False], ids=["free-space-check", "real-ENOSPC"])
def test_a_full_cache_disk_keeps_the_arrays_in_memory_and_leaves_nothing(checked, small_disk, monkeypatch, capsys):
    """A 2 MB entry on a real tmpfs with 1 MB free: refused by the free-space check, or (the check
    made to see plenty) by the real ENOSPC of posix_fallocate; the arrays stay in memory."""
    from tlmulti.data import cache

    base = small_disk / "features"
    batch = np.random.default_rng(0).random((50, 1000)).astype("float32")
    writer = cache.Writer("k" * 32, 500, dtype="float32", base=base)
    _fill(small_disk, 1 << 20)
    if not checked:
        monkeypatch.setattr(cache.paths, "free_bytes", lambda path: 1 << 40)
    for _ in range(10):
        writer.add(batch)
    arrays = writer.finish({"backbone": "x"})
    assert writer.in_memory and not isinstance(arrays[0], np.memmap)
    np.testing.assert_array_equal(arrays[0][-50:], batch)
    err = capsys.readouterr().err
    assert f"No space left on device for the cache entry '{base / ('k' * 32)}'" in err
    assert f"mounted at '{small_disk}'" in err and "needs about 2.0 MB" in err
    assert list(base.iterdir()) == [] and len(err.strip().splitlines()) == 1


def test_a_cache_write_hitting_enospc_cleans_up(tmp_path, monkeypatch, capsys):
    """ENOSPC injected into the allocation (the same path a real full disk takes)."""
    from tlmulti.data import cache

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    writer = cache.Writer("a" * 32, 8, base=tmp_path)
    writer.add(np.ones((4, 3), "float32"))
    writer.add(np.full((4, 3), 2, "float32"))
    arrays = writer.finish({"backbone": "x"})
    assert arrays[0].dtype == np.float16 and arrays[0][-1, 0] == 2
    assert "No space left on device for the cache entry" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _converted_spec(name="tiny_converted.test", units=300_000):  # 8 x 300,000 + 300,000 weights: 10.8 MB
    import keras

    from tlmulti import registry

    def build(spec, input_shape):
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(units, name="big")(inputs))

    def assign(model, tensors):
        pass

    return registry.BackboneSpec(name=name, source="converted", families=("vision",), input={},
                                 layer_groups={}, feature_layers=(),
                                 options={"format": "tflite", "architecture": build, "assign": assign}), build


def test_a_weights_conversion_never_lets_h5py_meet_a_full_disk(small_disk, tmp_path, monkeypatch, capsys):
    """TLMULTI_HOME on a 3 MB tmpfs, a 10.8 MB conversion: refused before h5py writes anything;
    the model is used for the run and nothing is left in the store."""
    from tlmulti.backbones import converted

    monkeypatch.setenv("TLMULTI_HOME", str(small_disk / "home"))
    monkeypatch.setattr(converted, "_read", lambda fmt, path, sha: {})
    source = tmp_path / "source.tflite"
    source.write_bytes(b"weights")
    spec, build = _converted_spec()
    model = converted.convert(spec, source, build, None)
    assert model.get_layer("big").weights[0].shape == (8, 300_000)
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert err.startswith("No space left on device for the converted weights of 'tiny_converted.test'")
    assert f"mounted at '{small_disk}'" in err and "needs about 11.9 MB" in err and "converted again" in err
    folder = small_disk / "home" / "weights" / spec.name
    assert not folder.exists() or list(folder.iterdir()) == []


def test_an_enospc_from_h5py_is_caught_and_its_file_removed(tlmulti_home, tmp_path, monkeypatch, capsys):
    import keras

    from tlmulti.backbones import converted

    monkeypatch.setattr(converted, "_read", lambda fmt, path, sha: {})

    def h5py_full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89HDF half")
        raise OSError("[Errno 28] Unable to synchronously create dataset (file write failed: errno = 28, "
                      "error message = 'No space left on device')")

    monkeypatch.setattr(keras.Model, "save_weights", h5py_full)
    source = tmp_path / "source.tflite"
    source.write_bytes(b"weights")
    spec, build = _converted_spec(units=800)
    converted.convert(spec, source, build, None)
    assert "No space left on device for the converted weights" in capsys.readouterr().err
    assert list((tlmulti_home / "weights" / spec.name).iterdir()) == []


# 3. two resumes of one run at once


def _resumable(folder: Path) -> Path:
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "failed", "classes": ["a", "b"]}))
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "state.json").write_text(json.dumps({"phase": 0, "epoch": 1, "history": [],
                                                                   "records": []}))
    (folder / ".tlmulti-run").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    return folder


def _take(folder, barrier, results, done=None):
    from tlmulti.errors import RunError
    from tlmulti.runs import take_over

    barrier.wait()
    try:
        take_over(folder)
        results.put("won")
    except RunError as exc:
        results.put("refused" if "is still training" in str(exc) else str(exc))
    if done is not None:
        done.wait(60)  # the winner keeps running (holding its claim) until every process has tried


def test_concurrent_resumes_in_threads_exactly_one_takes_over(tmp_path):
    import queue

    for trial in range(10):
        folder = _resumable(tmp_path / f"run{trial}")
        barrier, results = threading.Barrier(24), queue.Queue()
        threads = [threading.Thread(target=_take, args=(folder, barrier, results)) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        got = sorted(results.get(timeout=5) for _ in threads)
        assert got.count("won") == 1 and got.count("refused") == 23, (trial, got)
        assert json.loads((folder / ".tlmulti-run").read_text())["pid"] == os.getpid()


def test_concurrent_resumes_in_processes_exactly_one_takes_over(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(3):
        folder = _resumable(tmp_path / f"run{trial}")
        barrier, results, done = ctx.Barrier(20), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_take, args=(folder, barrier, results, done)) for _ in range(20)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=60) for _ in procs)
        done.set()
        for p in procs:
            p.join(10)
        assert got.count("won") == 1 and got.count("refused") == 19, (trial, got)


# 4. partial cache entries


def test_partial_cache_entries_are_listed_and_swept_when_their_process_ended(tlmulti_home):
    from click.testing import CliRunner

    from tlmulti.cli import main
    from tlmulti.data import cache

    root = cache.root()
    root.mkdir(parents=True)
    key = "c" * 32
    dead = root / f".{key}.partial-{_dead_pid()}-1"
    alive = root / f".{'d' * 32}.partial-{os.getpid()}-2"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "0.npy").write_bytes(b"\0" * (3 << 20))
    result = CliRunner().invoke(main, ["cache", "list"])
    assert result.exit_code == 0, result.output
    assert f"{key}  (partial: pid {dead.name.split('-')[1]} ended)" in result.output
    assert f"(partial: writing, pid {os.getpid()})" in result.output and "3.0" in result.output
    assert "0 entries and 2 partial" in result.output and "6.0 MiB" in result.output
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 0 and "3.0 MiB freed" in result.output
    assert not dead.exists() and alive.exists()  # a computation running now keeps its folder
    dead.mkdir()
    writer = cache.Writer(key, 2)  # a new computation of the same key sweeps the killed one's folder
    assert not dead.exists() and alive.exists()
    writer.abort()


# 5. damaged run folders and checkpoints: one line each


def _cli(args):
    from click.testing import CliRunner

    from tlmulti.cli import main

    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("damage", ["not json", "no classes"])
def test_a_damaged_run_json_is_one_line_for_every_command(damage, finished_run, disk_full_run, tiny, tmp_path):
    run = _copy(finished_run, tmp_path, "run")
    failed = _copy(disk_full_run[0], tmp_path, "failed")
    for folder in (run, failed):
        info = json.loads((folder / "run.json").read_text())
        info.pop("classes")
        (folder / "run.json").write_text("{\"status\": " if damage == "not json" else json.dumps(info))
    want = "is damaged (not valid JSON" if damage == "not json" else "has no valid 'classes'"
    image = str(tiny[1] / "cat" / "cat_0.png")
    for args in (["vision", "evaluate", str(run), "--data", "nowhere"], ["vision", "predict", str(run), image],
                 ["export", str(run), "--format", "tflite", "--out", str(tmp_path / "e")], ["resume", str(failed)]):
        result = _cli(args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert f"Error: '{args[2] if args[0] == 'vision' else args[1]}/run.json' {want}" in result.output, result.output
        assert "restore it from a backup" in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("damage", ["truncated", "object arrays"])
def test_a_damaged_checkpoint_is_one_line_and_kept(damage, disk_full_run, tiny, tmp_path):
    run = _copy(disk_full_run[0], tmp_path)
    weights = run / "checkpoint" / "weights.npz"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        with np.load(weights) as data:
            arrays = {k: data[k] for k in data.files}
        arrays[next(iter(arrays))] = np.array([{"x": 1}], dtype=object)
        np.savez(weights, **arrays)
    damaged = weights.read_bytes()
    result = _cli(["resume", str(run)])
    assert result.exit_code == 2, (result.output, result.exception)
    want = "it holds object arrays, which are never unpickled" if damage == "object arrays" else "truncated or damaged"
    assert f"Error: Checkpoint file '{weights}' cannot be read ({want}" in result.output, result.output
    assert "start it again with 'tlmulti run" in result.output and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("Error: Checkpoint file")  # after the data summary, one line
    assert weights.read_bytes() == damaged and _status(run) == "failed"


def test_a_damaged_state_json_is_refused_before_anything_is_overwritten(disk_full_run, tmp_path):
    run = _copy(disk_full_run[0], tmp_path)
    (run / "checkpoint" / "state.json").write_text("{")
    before = (run / "checkpoint" / "weights.npz").read_bytes()
    result = _cli(["resume", str(run)])
    assert result.exit_code == 2 and f"Checkpoint file '{run}/checkpoint/state.json' is missing or damaged" in result.output
    assert (run / "checkpoint" / "weights.npz").read_bytes() == before and _status(run) == "failed"


# 6. the feature cache's meta.json under concurrent readers


def _entry(base: Path) -> str:
    from tlmulti.data import cache

    writer = cache.Writer("e" * 32, 4, base=base)
    writer.add(np.arange(12, dtype="float32").reshape(4, 3))
    writer.finish({"backbone": "x"})
    return "e" * 32


def test_cache_meta_json_is_replaced_atomically_while_others_read_it(tmp_path):
    from tlmulti.data import cache

    key = _entry(tmp_path)
    meta = tmp_path / key / "meta.json"
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                json.loads(meta.read_text())
                reads[0] += 1
            except ValueError as exc:
                bad.append(exc)
            except FileNotFoundError as exc:
                bad.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(300):
        assert cache.load(key, tmp_path) is not None
    stop.set()
    for t in threads:
        t.join()
    assert not bad and reads[0] > 100
    assert [p.name for p in (tmp_path / key).iterdir() if p.name.startswith(".")] == []


def test_an_unreadable_meta_json_is_read_again_and_never_deleted(tmp_path, capsys):
    from tlmulti.data import cache

    key = _entry(tmp_path)
    meta = tmp_path / key / "meta.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])  # as a reader saw it mid-write before meta.json was atomic
    timer = threading.Timer(0.02, lambda: meta.write_text(good))  # the writer finishes
    timer.start()
    arrays = cache.load(key, tmp_path)
    timer.join()
    assert arrays is not None and arrays[0][3, 2] == 11 and capsys.readouterr().err == ""
    meta.write_text("{")  # stays unreadable: a miss, the entry kept
    assert cache.load(key, tmp_path) is None
    assert "not deleted now" in capsys.readouterr().err and (tmp_path / key / "0.npy").is_file()
    assert cache.load(key, tmp_path) is None and (tmp_path / key).is_dir()
    _entry(tmp_path)  # a new computation replaces it; the old folder is set aside until this process ends
    assert cache.load(key, tmp_path) is not None
    aside = cache.partials(tmp_path)
    assert len(aside) == 1 and aside[0]["alive"]
