"""Streaming volumes and texts: peak memory and time of reading the splits and making one pass
through the training pipeline, read into memory (``data.streaming: false``) against streamed from
the files (``true``), as the data grows; a second streamed run (volumes: the slice cache already
holds the decoded slices); and the streamed pipeline's throughput against the frozen model's.

Data are made here: NIfTI volumes (``.nii.gz``, 256 x 256 x 96 int16, two classes, one label per
volume; each slice is an example of image classification at the default recipe's 224 px) and a
``text,label`` CSV of word sequences (20-120 words each, default text recipe, MiniLM-L6). Every
measurement is its own process, run alone, with TensorFlow imported before its clock starts; its
peak resident memory and the private part of it (RssAnon) are sampled from ``/proc``.

    python benchmarks/streaming_inputs.py                       # 100k / 300k texts, 20 / 40 volumes
    python benchmarks/streaming_inputs.py --texts 20000 --volumes 4 --skip-throughput
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import measure, scratch_home  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
VOLUME_SHAPE = (256, 256, 96)


def recipe(kind: str, data: str, streaming: bool) -> dict:
    """The default recipe of the task, on ``data``, with the given streaming setting."""
    from tlmulti.recipe import load_recipe

    name = "image_classification" if kind == "volumes" else "text_classification"
    r = load_recipe(ROOT / "recipes" / "defaults" / f"{name}.yaml").to_dict()
    r["data"]["train"] = data
    r["data"]["streaming"] = streaming
    return r


def child(spec: dict) -> None:
    """Read the splits and make one pass through the training pipeline; print what it took."""
    import resource

    import tensorflow  # noqa: F401  (its start-up is not part of the measurement)

    from tlmulti.data.pipeline import make_epoch_dataset
    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    task = make_task(from_dict(spec["recipe"]))
    task.derive_defaults()
    t0 = time.perf_counter()
    train, val, _ = task.load_splits()
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for x, _ in make_epoch_dataset(train.x, train.y, 32, seed=0, epochs=1):
        n += int(x.shape[0])
    passed = time.perf_counter() - t0
    print("RESULT " + json.dumps({"read": read, "pass": passed, "examples": n, "val": len(val),
                                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)


def throughput(spec: dict) -> None:
    """Examples per second of the streamed pipeline alone, and of the frozen backbone on a batch
    already in memory, in this one process."""
    import numpy as np

    from tlmulti.data.pipeline import make_epoch_dataset
    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    task = make_task(from_dict(spec["recipe"]))
    task.derive_defaults()
    train, _, _ = task.load_splits()
    steps = min(len(train), 4096) // 32
    ds = make_epoch_dataset(train.x, train.y, 32, seed=0, epochs=1).take(steps)
    it = iter(ds)
    next(it)
    t0 = time.perf_counter()
    for _ in it:
        pass
    pipe = (steps - 1) * 32 / (time.perf_counter() - t0)
    model = task.build(train.classes).feature_model()
    sample = np.asarray(train.x[np.arange(32)])
    model.predict_on_batch(sample)
    reps = 6
    t0 = time.perf_counter()
    for _ in range(reps):
        model.predict_on_batch(sample)
    net = reps * 32 / (time.perf_counter() - t0)
    print("RESULT " + json.dumps({"pipeline": pipe, "model": net}), flush=True)


def write_volumes(folder: Path, count: int) -> None:
    """``count`` NIfTI volumes in two class folders: smooth anatomy-like intensities with noise,
    class b brighter in a central disc."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    h, w, d = VOLUME_SHAPE
    yy, xx, zz = np.mgrid[:h, :w, :d].astype(np.float32)
    base = 400 + 150 * np.sin(xx / 30) * np.cos(yy / 45) + 2 * zz
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (h / 5) ** 2
    for i in range(count):
        label = "ab"[i % 2]
        volume = base + rng.normal(0, 25, VOLUME_SHAPE).astype(np.float32) + (300 * disc if label == "b" else 0)
        (folder / label).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), str(folder / label / f"v{i:03d}.nii.gz"))


def write_texts(path: Path, count: int) -> None:
    """A ``text,label`` CSV of ``count`` texts of 20-120 words; the label follows the words."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(5000)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for i in range(count):
            label = i % 2
            ids = rng.integers(label * 2500, label * 2500 + 2500, rng.integers(20, 121))
            out.writerow([" ".join(words[k] for k in ids), "pos" if label else "neg"])


def row(result: dict) -> str:
    if result.get("killed"):
        return f"killed past {result['peak_mb'] / 1024:.1f} GB"
    return (f"{result['read'] + result['pass']:6.1f} s, {result['peak_mb'] / 1024:4.2f} GB "
            f"({result['anon_mb'] / 1024:4.2f} private)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--throughput")
    parser.add_argument("--texts", type=int, nargs="*", default=[100_000, 300_000])
    parser.add_argument("--volumes", type=int, nargs="*", default=[20, 40])
    parser.add_argument("--limit-gb", type=float, default=16.0)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.throughput:
        return throughput(json.loads(args.throughput))

    from tlmulti import paths

    real = paths.home()
    work = Path(tempfile.mkdtemp(prefix="tlmulti-streaming-"))
    sizes = [("texts", n) for n in args.texts] + [("volumes", n) for n in args.volumes]

    def run(argv_flag: str, spec: dict, home: str) -> dict:
        return measure([sys.executable, __file__, argv_flag, json.dumps(spec)],
                       {**os.environ, "TLMULTI_HOME": home}, args.limit_gb)

    print("read the splits + one pass through the training pipeline (batch 32); time without TensorFlow's "
          "start-up; peak resident memory (private part)")
    print(f"{'data':<24} {'in memory':<32} {'streamed':<32} {'streamed again':<32} private streamed / in memory")
    try:
        for kind, n in sizes:
            data = work / f"{kind}_{n}"
            if kind == "texts":
                write_texts(data.with_suffix(".csv"), n)
                source = str(data.with_suffix(".csv"))
            else:
                write_volumes(data, n)
                source = str(data)
            home = scratch_home(real)  # an empty slice cache: the first streamed run decodes every volume
            try:
                memory = run("--child", {"recipe": recipe(kind, source, False)}, home)
                streamed = run("--child", {"recipe": recipe(kind, source, True)}, home)
                again = run("--child", {"recipe": recipe(kind, source, True)}, home) if kind == "volumes" else None
            finally:
                shutil.rmtree(home, ignore_errors=True)
            label = f"{n:,} {kind}" + (" 256x256x96" if kind == "volumes" else "")
            ratio = streamed["anon_mb"] / memory["anon_mb"] if not memory.get("killed") else float("nan")
            print(f"{label:<24} {row(memory):<32} {row(streamed):<32} {row(again) if again else '':<32} "
                  f"{ratio:.2f}x", flush=True)
            if again:
                print(f"{'':<24} reading: first streamed run {streamed['read']:.1f} s, again {again['read']:.1f} s "
                      f"({streamed['read'] / again['read']:.1f}x faster with the slice cache)", flush=True)
            if not args.skip_throughput and n == max(m for k, m in sizes if k == kind):
                home = scratch_home(real)
                try:
                    t = run("--throughput", {"recipe": recipe(kind, source, True)}, home)
                finally:
                    shutil.rmtree(home, ignore_errors=True)
                print(f"{'':<24} streamed pipeline {t['pipeline']:,.1f} examples/s, frozen backbone "
                      f"{t['model']:,.1f} examples/s: pipeline / model {t['pipeline'] / t['model']:.1f}x", flush=True)
            shutil.rmtree(data, ignore_errors=True)
            data.with_suffix(".csv").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
