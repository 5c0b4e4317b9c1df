"""Fine-tuning cost with the cut cache against end to end: the same recipe and data trained twice
in one process, the fine-tuning phase once on the cached cut (``cache_features: auto``, the
default) and once end to end (``phases.K.cache_features=false``), each run with an empty
feature cache of its own.

| row | recipe | fine-tuning phase |
|---|---|---|
| ``fashion`` | ``recipes/vision/fashion_mnist.yaml``: Lite0 at 224 px, 3,000 Fashion-MNIST images | ``top:3``, horizontal flip: 2 cached views |
| ``fashion-noflip`` | the same with ``data.augment.flip=none`` | ``top:3``, 1 view |
| ``patches`` | ``recipes/vision/nuclei_patches.yaml``: Lite0 at 224 px, 588 nuclei patches | ``top:3``, ``flip: both``: 4 views |
| ``text`` (not by default) | ``recipes/text/spam_assassin.yaml``: MiniLM-L6 | trains end to end (no cut cache for text) |
| ``speech`` (not by default) | ``recipes/audio/speech_commands.yaml``: Whisper tiny.en | trains end to end (no cut cache for speech) |

Each row prints the fine-tuning phase's seconds per epoch both ways (the phase's seconds less the
cut cache's, over the epochs it ran; from ``metrics.json``), the cut cache's seconds (computed
once, then read by later runs), the speed-up per epoch and of the whole phase, the test metric
both ways (accuracy; for the patches the AUROC of 'nucleus'), and the share of the backbone's
forward FLOPs below the cut, counted per Conv2D / DepthwiseConv2D / Dense layer from its output
shape and kernel: ``1 / (1 - share below)`` is the ideal speed-up of the forward pass (the
backward pass runs above the cut either way, so an epoch gains less). The ``text`` and ``speech`` rows run once, on the default
setting, and print the reason the phase record gives for training end to end.

    python benchmarks/finetune_cost.py                           # fashion, fashion-noflip, patches
    python benchmarks/finetune_cost.py --rows fashion --limit 5  # smoke run: 5 images per class
    python benchmarks/finetune_cost.py --rows text speech --json cost.json

``--limit N`` keeps N training examples per class (``data.limit_per_class``) and the first N
test examples per class. The datasets and backbone weights are read from the usual
``$TLMULTI_HOME``; each run gets a scratch home whose ``cache`` folder starts empty (the rest
links to the real one).
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

ROWS = {  # name: (recipe, overrides, test metric)
    "fashion": ("vision/fashion_mnist.yaml", [], "accuracy"),
    "fashion-noflip": ("vision/fashion_mnist.yaml", ["data.augment.flip=none"], "accuracy"),
    "patches": ("vision/nuclei_patches.yaml", [], "auroc"),
    "text": ("text/spam_assassin.yaml", [], "accuracy"),
    "speech": ("audio/speech_commands.yaml", [], "accuracy"),
}
DEFAULT_ROWS = ["fashion", "fashion-noflip", "patches"]


# ------------------------------------------------------------------------------------- data


def _label(row: dict, column: str) -> str:
    return str(row.get(column, ""))


def limited_test(ref: str, n: int, label_column: str, path_column: str, out: Path) -> str:
    """A copy of test data ``ref`` with its first ``n`` examples per class: a ``path,label``
    manifest of a class-folder tree, or the rows of a CSV / JSONL manifest (relative paths made
    absolute)."""
    from tlmulti.datasets import dataset_path

    source = dataset_path(ref) if ref.startswith("dataset:") else Path(ref)
    out.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        rows = [{"path": str(f), "label": d.name} for d in sorted(p for p in source.iterdir() if p.is_dir())
                for f in sorted(d.iterdir())[:n] if f.is_file()]
        target = out / "test.csv"
        with target.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
        return str(target)
    if source.suffix == ".jsonl":
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    else:
        with source.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    kept, counts = [], {}
    for row in rows:
        label = _label(row, label_column)
        if counts.get(label, 0) < n:
            counts[label] = counts.get(label, 0) + 1
            if path_column in row and row[path_column] and not Path(row[path_column]).is_absolute():
                row[path_column] = str(source.parent / row[path_column])
            kept.append(row)
    target = out / f"test{source.suffix}"
    if source.suffix == ".jsonl":
        target.write_text("".join(json.dumps(r) + "\n" for r in kept))
    else:
        with target.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
    return str(target)


def scratch_home(real: Path, where: Path) -> Path:
    """A TLMULTI_HOME whose entries link to ``real``'s, except ``cache`` (features), which is empty."""
    home = where / "home"
    home.mkdir(parents=True)
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "cache":
                (home / entry.name).symlink_to(entry)
    return home


# ------------------------------------------------------------------------------------- FLOPs


def layer_flops(layer, inputs, outputs) -> int:
    """Multiply-adds of one call of a Conv2D / DepthwiseConv2D / Dense layer (0 for the rest)."""
    import keras
    import numpy as np

    out, cin = outputs[0].shape, inputs[0].shape[-1]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return int(np.prod(out[1:]) * np.prod(layer.kernel_size))
    if isinstance(layer, keras.layers.Conv2D):
        return int(np.prod(out[1:]) * np.prod(layer.kernel_size) * cin // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(out[1:]) * cin)
    return 0


def model_flops(model) -> int:
    """Forward multiply-adds of a functional model, nested functional models included."""
    import keras

    total = 0
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            op = node.operation
            if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
                total += model_flops(op)
            elif node.input_tensors and node.output_tensors:
                total += layer_flops(op, node.input_tensors, node.output_tensors)
    return total


def share_below_cut(recipe, phase_index: int) -> float | None:
    """The share of the backbone's forward FLOPs below the cut of phase ``phase_index`` (None
    when the backbone cannot be cut there)."""
    import keras

    from tlmulti.tasks import make_task
    from tlmulti.training.cut import find_cut
    from tlmulti.training.freezing import resolve_unfreeze

    task = make_task(recipe)
    task.derive_defaults()
    parts = task.build(["a", "b"])
    unfrozen = resolve_unfreeze(recipe.phases[phase_index].unfreeze, list(parts.groups))
    tensor, _, _ = find_cut(parts.backbone, parts.groups, unfrozen)
    if tensor is None:
        return None
    below = model_flops(keras.Model(parts.backbone.inputs[0], tensor))
    return below / model_flops(parts.backbone)


# ------------------------------------------------------------------------------------- runs


def finetune_index(recipe) -> int:
    """The first phase that unfreezes backbone groups."""
    for i, phase in enumerate(recipe.phases):
        if phase.unfreeze not in (None, "none", []):
            return i
    raise SystemExit(f"recipe '{recipe.name}' has no phase that unfreezes the backbone")


def run_arm(path: Path, overrides: list[str], metric: str, real_home: Path, scratch: Path) -> dict:
    """Train the recipe with a fresh feature cache; the fine-tuning phase's record and the test metrics."""
    import tlmulti

    home = scratch_home(real_home, scratch)
    os.environ["TLMULTI_HOME"] = str(home)
    try:
        recipe = tlmulti.load_recipe(path, overrides=overrides)
        k = finetune_index(recipe)
        t0 = time.perf_counter()
        run = tlmulti.train(recipe, out=scratch / "runs")
        wall = time.perf_counter() - t0
    finally:
        os.environ["TLMULTI_HOME"] = str(real_home)
        shutil.rmtree(home, ignore_errors=True)
    phase = run.metrics["phases"][k]
    test = run.metrics.get("test", {})
    cut = phase.get("cut_cache") or {}
    cache = float(cut.get("cache_seconds", 0.0)) if cut.get("used") else 0.0
    epochs = max(1, int(phase["epochs_run"]))
    return {"phase": phase["name"], "epochs": int(phase["epochs_run"]), "seconds": float(phase["seconds"]),
            "cache_seconds": cache, "per_epoch": (float(phase["seconds"]) - cache) / epochs,
            "cut_cache": cut, "metric": metric, "test": test.get(metric), "wall": wall}


def run_row(name: str, limit: int | None, scratch: Path, real_home: Path) -> dict:
    import tlmulti

    file, extra, metric = ROWS[name]
    path = ROOT / "recipes" / file
    recipe = tlmulti.load_recipe(path, overrides=extra)
    k = finetune_index(recipe)
    overrides = list(extra) + ["callbacks.verbose=0", "output.plots=false"]
    if limit:
        data = recipe.data
        test = limited_test(data.test, limit, data.label_column, getattr(data, "path_column", "path"),
                            scratch / name / "data")
        overrides += [f"data.limit_per_class={limit}", f"data.test={test}"]
    cut = run_arm(path, overrides, metric, real_home, scratch / name / "cut")
    row = {"row": name, "recipe": str(path.relative_to(ROOT)), "limit": limit, "phase_index": k, "cut": cut}
    if not cut["cut_cache"].get("used"):
        row["note"] = "end to end: " + cut["cut_cache"].get("reason", "no cut cache for this task")
        return row
    row["end_to_end"] = run_arm(path, overrides + [f"phases.{k}.cache_features=false"], metric, real_home,
                                scratch / name / "e2e")
    row["share_below"] = share_below_cut(tlmulti.load_recipe(path, overrides=overrides), k)
    return row


def _score(arm: dict) -> str:
    value = arm["test"]
    return f"{arm['metric']} {value:.4f}" if isinstance(value, (int, float)) else f"{arm['metric']} -"


def table(rows: list[dict]) -> str:
    lines = ["| row | views | s/epoch end to end | s/epoch cut | cut cache s | speed-up/epoch | speed-up phase "
             "| FLOPs below cut | ideal forward speed-up | test end to end | test cut |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cut = r["cut"]
        if "end_to_end" not in r:
            lines.append(f"| {r['row']} | - | {cut['per_epoch']:.1f} | - | - | - | - | - | - | "
                         f"{_score(cut)} | {r['note']} |")
            continue
        e2e, share = r["end_to_end"], r.get("share_below")
        ideal = f"{1 / (1 - share):.2f}x" if share is not None and share < 1 else "-"
        lines.append(
            f"| {r['row']} | {cut['cut_cache'].get('views', 1)} | {e2e['per_epoch']:.1f} | {cut['per_epoch']:.1f} "
            f"| {cut['cache_seconds']:.1f} | {e2e['per_epoch'] / cut['per_epoch']:.2f}x "
            f"| {e2e['seconds'] / cut['seconds']:.2f}x | {'-' if share is None else f'{share:.1%}'} | {ideal} "
            f"| {_score(e2e)} | {_score(cut)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    parser.add_argument("--limit", type=int, default=None, help="examples per class (training and test)")
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()

    from tlmulti import paths

    real_home = paths.home()
    scratch = Path(tempfile.mkdtemp(prefix="tlmulti-finetune-cost-"))
    rows = []
    try:
        for name in args.rows:
            print(f"{name}: training with the cut cache and end to end ...", file=sys.stderr, flush=True)
            rows.append(run_row(name, args.limit, scratch, real_home))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
