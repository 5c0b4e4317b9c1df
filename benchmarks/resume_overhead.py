"""Interrupted runs against an uninterrupted one, and what checkpoints and determinism cost.

On a Fashion-MNIST subset (``--per-class`` images per class, EfficientNet-Lite0 at ``--size``
px, a cached head phase then the top groups fine-tuned, ``deterministic: true``):

1. an uninterrupted CLI run;
2. the same run killed with SIGKILL at several points (during the first feature cache, mid
   head phase, between phases, mid fine-tuning), then ``tlmulti resume``: final test accuracy
   and loss against (1);
3. in one process: the phases with per-epoch checkpoints against the same phases without a run
   folder (no checkpoints): the overhead as a ratio of run time;
4. in a second process: ``deterministic: false`` against ``true`` (op determinism cannot be
   switched off once on, so each in its own process): the cost as a ratio.

    python benchmarks/resume_overhead.py [--per-class 60] [--size 96]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CLI = [sys.executable, "-c", "from tlmulti.cli import main; main()"]


def _args(out, per_class, size, deterministic=True):
    return ["run", str(Path(__file__).resolve().parents[1] / "recipes" / "vision" / "fashion_mnist.yaml"),
            "--set", f"data.limit_per_class={per_class}", "--set", f"data.image_size=[{size}, {size}]",
            "--set", "phases.0.epochs=8", "--set", "phases.1.epochs=4", "--set", "callbacks.verbose=0",
            "--set", "callbacks.early_stopping.enabled=false", "--set", f"deterministic={str(deterministic).lower()}",
            "--set", "output.plots=false", "--out", str(out)]


def _metrics(out):
    m = json.loads((Path(out) / "metrics.json").read_text())["test"]
    return m["accuracy"], m["loss"]


def _kill_at(out, per_class, size, phase, epoch):
    proc = subprocess.Popen(CLI + _args(out, per_class, size), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = Path(out) / "checkpoint" / "state.json"
    while proc.poll() is None:
        try:
            state = json.loads(state_path.read_text())
            if (state["phase"], state["epoch"]) >= (phase, epoch):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    if phase == 0 and epoch == 0:
        time.sleep(2.0)  # inside the first feature cache
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t = time.perf_counter()
    subprocess.run(CLI + ["resume", str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _timed_phases(per_class, size, deterministic, with_checkpoints, tmp):
    code = f"""
import time, tlmulti
from tlmulti.tasks import make_task
from tlmulti.training.trainer import fine_tune
import keras
r = tlmulti.load_recipe({str(Path(__file__).resolve().parents[1] / 'recipes' / 'vision' / 'fashion_mnist.yaml')!r},
    overrides=["data.limit_per_class={per_class}", "data.image_size=[{size}, {size}]", "phases.0.epochs=8",
               "phases.1.epochs=4", "callbacks.verbose=0", "callbacks.early_stopping.enabled=false",
               "deterministic={str(deterministic).lower()}"])
if r.deterministic:
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
task = make_task(r); tr, va, te = task.load_splits(); task.classes = tr.classes
parts = task.build(tr.classes)
t = time.perf_counter()
fine_tune(parts, task, tr, va, r, {repr(str(tmp)) if with_checkpoints else None})
print(time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three timed runs")
    parser.add_argument("--skip-kills", action="store_true", help="only the timing part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.skip_kills:
            return _timings(args, tmp)
        t = time.perf_counter()
        subprocess.run(CLI + _args(tmp / "full", args.per_class, args.size), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        full_s = time.perf_counter() - t
        ref = _metrics(tmp / "full")
        print(f"uninterrupted: test accuracy {ref[0]:.4f}, loss {ref[1]:.5f} ({full_s:.0f} s)", flush=True)
        rows = []
        for label, (phase, epoch) in {"during the first feature cache": (0, 0), "mid head phase": (0, 4),
                                      "between phases": (1, 0), "mid fine-tuning": (1, 2)}.items():
            out = tmp / label.replace(" ", "_")
            _kill_at(out, args.per_class, args.size, phase, epoch)
            acc, loss = _metrics(out)
            rows.append((label, acc, loss))
            print(f"kill -9 {label}, resumed: accuracy {acc:.4f} ({acc - ref[0]:+.4f}), loss {loss:.5f} "
                  f"({loss - ref[1]:+.2e})", flush=True)
        _timings(args, tmp)


def _timings(args, tmp):
    with_ck, without, nondet = [], [], []
    runs = [(with_ck, True, True), (without, True, False), (nondet, False, False)]
    for k in range(args.repeats):  # interleaved in a rotating order, the fastest of each: timings on a
        (tmp / f"ck{k}").mkdir()   # shared machine are noisy, and the first process of a round may differ
        for times, deterministic, checkpoints in runs[k % 3:] + runs[:k % 3]:
            times.append(_timed_phases(args.per_class, args.size, deterministic, checkpoints,
                                       tmp / f"ck{k}" if checkpoints else None))
    with_ck, without, nondet = min(with_ck), min(without), min(nondet)
    print(f"\nper-epoch checkpoints: {with_ck:.1f} s against {without:.1f} s without: {with_ck / without:.3f}x")
    print(f"determinism: {without:.1f} s with op determinism against {nondet:.1f} s without: {without / nondet:.3f}x")


if __name__ == "__main__":
    main()
