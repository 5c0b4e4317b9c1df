"""Scale: peak resident memory and wall time of a frozen-phase run as the dataset grows, before
(every image decoded into memory, features held in memory) and after (``data.streaming: auto``,
the disk feature cache), the cache's second-run speed-up, the input pipeline's throughput against
the model's, and the segmentation recipe's peak memory.

Every run is a separate process (its peak RSS is its own, read from ``getrusage`` at its end) with
a watchdog that kills it past ``--limit-gb`` and reports that instead. The "after" runs use a
cache folder of their own (a temporary ``$TLMULTI_HOME`` that links to the datasets), so the first
one computes the features and the second reads them.

    python benchmarks/scaling.py                          # 2,000 / 20,000 / 60,000 images at 160 px
    python benchmarks/scaling.py --sizes 2000 --skip-segmentation
    git worktree add /tmp/base COMMIT && python benchmarks/scaling.py --before-code /tmp/base

Peak memory is printed as the resident total and, in brackets, its private part (RssAnon): the
rest is file pages, mostly the memory-mapped feature cache, which the kernel reclaims under
pressure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BEFORE = {"data.streaming": False, "cache.disk": False}
AFTER = {"data.streaming": "auto", "cache.disk": True}


def classification_recipe(n: int, image_size: int, settings: dict | None) -> dict:
    """``settings`` None: without the streaming and cache keys (for code that predates them)."""
    recipe = {
        "task": "image_classification", "name": f"scaling_{n}", "seed": 0,
        "backbone": {"name": "efficientnet_lite0.imagenet"},
        "data": {"train": "dataset:fashion-mnist-full/train", "limit_per_class": n // 10,
                 "image_size": [image_size, image_size], "val_split": 0.1, "batch_size": 32,
                 "streaming": (settings or AFTER)["data.streaming"]},
        "cache": {"disk": (settings or AFTER)["cache.disk"]},
        "phases": [{"name": "head", "epochs": 5, "learning_rate": 1e-3, "unfreeze": "none"}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
        "output": {"plots": False},
    }
    if settings is None:
        del recipe["data"]["streaming"], recipe["cache"]
    return recipe


def segmentation_recipe(data_dir: str, settings: dict | None) -> dict:
    """The default segmentation recipe (both phases) on ``data_dir``."""
    from tlmulti.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "defaults" / "segmentation.yaml").to_dict()
    recipe["data"]["train"] = data_dir
    recipe.pop("cache", None)
    if settings is not None:
        recipe["data"]["streaming"] = settings["data.streaming"]
        recipe["cache"] = {"disk": settings["cache.disk"]}
    else:
        recipe["data"].pop("streaming", None)
        recipe.pop("precision", None)
    recipe["callbacks"]["verbose"] = 0
    recipe["output"] = {"plots": False}
    return recipe


def child(spec: dict) -> None:
    """One run in this process; prints a JSON line with what it measured."""
    import resource

    import tlmulti
    from tlmulti.recipe import from_dict

    t0 = time.perf_counter()
    out = tempfile.mkdtemp(prefix="tlmulti-scaling-")
    try:
        run = tlmulti.train(from_dict(spec["recipe"]), out=out)
        phase = run.metrics["phases"][0]
        val = run.metrics["val"]
        print("RESULT " + json.dumps({
            "wall": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metric": val.get("accuracy", val.get("mean_dice")), "cache_seconds": phase.get("cache_seconds"),
            "cache_hits": phase.get("cache_hits"), "train": run.metrics["data"]["train"]}), flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _rss_mb(pid: int) -> tuple[float, float]:
    """(resident, of which private: RssAnon) in MiB; the rest is file pages such as the
    memory-mapped feature cache, which the kernel drops when memory is short."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "RssAnon:")):
                found[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return found.get("VmRSS", 0.0), found.get("RssAnon", 0.0)


def run_child(recipe: dict, home: str, limit_gb: float, code: str | None = None) -> dict:
    env = {**os.environ, "TLMULTI_HOME": home}
    if code:  # another version of tlmulti (a checkout of an earlier commit) runs this one
        env["PYTHONPATH"] = code
    return measure([sys.executable, __file__, "--child", json.dumps({"recipe": recipe})], env, limit_gb)


def measure(argv: list[str], env: dict, limit_gb: float) -> dict:
    """Run ``argv`` (a child that prints one ``RESULT {json}`` line), sampling its resident and
    private memory; killed past ``limit_gb``. Adds ``wall`` (the whole process), ``peak_mb`` and
    ``anon_mb`` (the private part) to the child's result."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0, peak, anon, killed = time.perf_counter(), 0.0, 0.0, False
    lines = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss, private = _rss_mb(proc.pid)
        peak, anon = max(peak, rss), max(anon, private)
        if peak > limit_gb * 1024:
            proc.kill()
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    reader.join(5)
    wall = time.perf_counter() - t0
    if killed:
        return {"killed": True, "wall": wall, "peak_mb": peak}
    result = next((json.loads(l[7:]) for l in lines if l.startswith("RESULT ")), None)
    if result is None:
        sys.stdout.write("".join(lines[-30:]))
        raise SystemExit(f"a run failed (exit {proc.returncode})")
    result["wall"] = wall  # the whole process: start, reading, features, training, evaluation
    result.setdefault("peak_mb", peak)  # the child's own getrusage peak when it reports one
    result["anon_mb"] = anon
    return result


def scratch_home(real: Path) -> str:
    """A TLMULTI_HOME with an empty cache that links to the real datasets and weights."""
    home = Path(tempfile.mkdtemp(prefix="tlmulti-home-"))
    if real.exists():
        for entry in real.iterdir():
            if entry.name != "cache":
                (home / entry.name).symlink_to(entry)
    return str(home)


def fmt(r: dict) -> str:
    if r.get("killed"):
        return f"killed past {r['peak_mb'] / 1024:.1f} GB after {r['wall']:.0f} s"
    return (f"{r['wall']:6.1f} s {r['peak_mb'] / 1024:5.2f} GB ({r['anon_mb'] / 1024:4.2f} private) "
            f"{r['metric']:.4f}")


def throughput(n: int, image_size: int) -> None:
    """Examples per second of the streaming input pipeline alone, and of the frozen backbone on
    batches already in memory (same batch size, same process)."""
    import numpy as np

    from tlmulti.data.pipeline import make_epoch_dataset
    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    recipe = from_dict(classification_recipe(n, image_size, {"data.streaming": True, "cache.disk": True}))
    task = make_task(recipe)
    task.derive_defaults()
    train, _, _ = task.load_splits()
    batch = recipe.data.batch_size
    count = min(len(train), 4096)
    steps = count // batch
    ds = make_epoch_dataset(train.x, train.y, batch, seed=0, epochs=1).take(steps)
    next(iter(ds))
    t0 = time.perf_counter()
    for x, _ in ds:
        pass
    pipe = steps * batch / (time.perf_counter() - t0)
    model = task.build(train.classes).feature_model()
    sample = np.asarray(train.x[np.arange(batch)])
    model.predict_on_batch(sample)
    reps = max(4, 640 // batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        model.predict_on_batch(sample)
    net = reps * batch / (time.perf_counter() - t0)
    print(f"\ninput pipeline (decode {image_size} px PNG files, batch {batch}): {pipe:8.1f} examples/s")
    print(f"frozen backbone forward pass on in-memory batches:  {net:8.1f} examples/s")
    print(f"pipeline / model: {pipe / net:.1f}x")


def write_volume(folder: Path, slices: int, h: int, w: int) -> None:
    """A synthetic MR-like volume and its label volume: bright blobs on a smooth background."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((h, w, slices), np.int16)
    labels = np.zeros((h, w, slices), np.uint8)
    for k in range(slices):
        base = 300 + 100 * np.sin(xx / 40 + k / 7) + rng.normal(0, 30, (h, w))
        for _ in range(4):
            cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(6, 18)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            base[blob] += 600
            labels[..., k][blob] = 1
        image[..., k] = base.astype(np.int16)
    for sub, arr in (("images", image), ("masks", labels)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(folder / sub / "scan.nii.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 60000])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--limit-gb", type=float, default=16.0)
    parser.add_argument("--skip-segmentation", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--before-code", help="a checkout of an earlier tlmulti (its repository root) to run the "
                        "'before' runs with, in its own defaults; without it, this code with streaming and the "
                        "disk cache off")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    from tlmulti import paths

    real = paths.home()
    print(f"frozen-phase run: EfficientNet-Lite0 (ImageNet), {args.image_size} px, Fashion-MNIST, 10% validation, "
          "5 head epochs; one process per run; metric = validation accuracy")
    print(f"{'images':>7}  {'before':<44} {'after (streaming + disk cache)':<44} {'after, 2nd run':<44}")
    rows = []
    old = args.before_code
    for n in args.sizes:
        before = run_child(classification_recipe(n, args.image_size, None if old else BEFORE), str(real),
                           args.limit_gb, old)
        home = scratch_home(real)
        try:
            first = run_child(classification_recipe(n, args.image_size, AFTER), home, args.limit_gb)
            second = run_child(classification_recipe(n, args.image_size, AFTER), home, args.limit_gb)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        rows.append((n, before, first, second))
        print(f"{n:>7}  {fmt(before):<44} {fmt(first):<44} {fmt(second):<44}", flush=True)
    print()
    for n, before, first, second in rows:
        parts = [f"{n:>7} images:"]
        if not before.get("killed"):
            parts.append(f"peak memory after / before {first['peak_mb'] / before['peak_mb']:.2f}x;")
            parts.append(f"wall after / before {first['wall'] / before['wall']:.2f}x;")
            parts.append(f"accuracy after - before {first['metric'] - before['metric']:+.4f};")
        parts.append(f"2nd run speed-up {first['wall'] / second['wall']:.1f}x "
                     f"(features {first['cache_seconds']:.1f} s -> {second['cache_seconds']:.1f} s, "
                     f"cache hits {second['cache_hits']})")
        print(" ".join(parts))

    if not args.skip_throughput:
        throughput(max(args.sizes), args.image_size)

    if not args.skip_segmentation:
        data = Path(tempfile.mkdtemp(prefix="tlmulti-seg-"))
        try:
            write_volume(data, 41, 233, 197)
            print("\ndefault segmentation recipe, 41 MR-like slices of 233 x 197 (one NIfTI volume + labels)")
            before = run_child(segmentation_recipe(str(data), None if old else BEFORE), str(real), args.limit_gb, old)
            home = scratch_home(real)
            try:
                after = run_child(segmentation_recipe(str(data), AFTER), home, args.limit_gb)
            finally:
                shutil.rmtree(home, ignore_errors=True)
            print(f"  before: {fmt(before)}\n  after:  {fmt(after)}")
            if not before.get("killed"):
                print(f"  peak memory after / before {after['peak_mb'] / before['peak_mb']:.2f}x; "
                      f"Dice after - before {after['metric'] - before['metric']:+.4f}")
        finally:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
