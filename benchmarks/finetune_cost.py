"""Fine-tuning cost with the cut cache against end to end: the same recipe and data trained twice
in one process, the fine-tuning phase once on the cached cut (``phases.K.cache_features=true``;
for images and text the default ``auto`` does the same, speech trains end to end under ``auto``)
and once end to end (``phases.K.cache_features=false``), each run with an empty feature cache of
its own.

| row | recipe | fine-tuning phase |
|---|---|---|
| ``fashion`` | ``recipes/vision/fashion_mnist.yaml``: Lite0 at 224 px, 3,000 Fashion-MNIST images | ``top:3``, horizontal flip: 2 cached views |
| ``fashion-noflip`` | the same with ``data.augment.flip=none`` | ``top:3``, 1 view |
| ``patches`` | ``recipes/vision/nuclei_patches.yaml``: Lite0 at 224 px, 588 nuclei patches | ``top:3``, ``flip: both``: 4 views |
| ``text`` (not by default) | ``recipes/text/spam_assassin.yaml``: MiniLM-L6, 128 tokens, 500 e-mails | ``top:2``: the hidden states after ``transformer_layer_3`` and the padding mask cached |
| ``fortunes`` (not by default) | ``recipes/defaults/text_classification.yaml`` (the zero-flag text default, ``strategy=fixed``) on ``dataset:fortunes``: MiniLM-L6, 720 quotes, 24 classes | ``top:2``, as ``text`` |
| ``packages`` (not by default) | the same on ``dataset:debian-packages``: 630 one-line package summaries, 21 sections | ``top:2``, as ``text`` |
| ``segmentation`` | ``recipes/defaults/segmentation.yaml`` (the zero-flag default, ``strategy=fixed``): U-Net over Lite0 on the nuclei | ``top:2``: the input of ``stage7`` and the four finer skips cached; ``flip: both`` with ``rot90``: 8 cached views, each with its mask |
| ``speech`` (not by default) | ``recipes/audio/speech_commands.yaml`` with ``data.augment`` off: Whisper tiny.en, 1 s clips | ``top:2``: the hidden states after ``transformer_encoder_layer_2`` cached |

A cached cut cannot augment its inputs (``cache_features: true`` caches anyway, without the
augmentation), so the ``speech`` row turns the recipe's waveform augmentation and SpecAugment off
in both runs, to compare like with like.

Each row prints the fine-tuning phase's seconds per epoch both ways (the phase's seconds less the
cut cache's, over the epochs it ran; from ``metrics.json``), the cut cache's seconds (computed
once, then read by later runs), the speed-up per epoch and of the whole phase, the test metric
both ways (accuracy; for the patches the AUROC of 'nucleus'; for segmentation the mean
foreground Dice), and the share of the model's
forward FLOPs (backbone and head: a segmentation decoder is not small) below the cut. FLOPs are multiply-adds counted per Conv / DepthwiseConv2D / Dense
/ EinsumDense layer from its kernel and the positions it runs on, inside transformer layers
too, plus the attention's score and value products (``tokens**2 * heads * (key_dim + value_dim)`` per
self-attention), at the shapes one example takes (the text's sequence length, the clip's
frames): ``1 / (1 - share below)`` is the ideal speed-up of the forward pass (the backward pass
runs above the cut either way, so an epoch gains less). A row whose phase record says it
trained end to end anyway runs once and prints the reason.

    python benchmarks/finetune_cost.py                           # fashion, fashion-noflip, patches, segmentation
    python benchmarks/finetune_cost.py --rows fashion --limit 5  # smoke run: 5 images per class
    python benchmarks/finetune_cost.py --rows text speech --json cost.json
    python benchmarks/finetune_cost.py --rows text --set cache.dtype=float32   # an override in both arms
    python benchmarks/finetune_cost.py --rows text --seeds 0 1 2 # three seeds, and the mean difference
    python benchmarks/finetune_cost.py --rows text --frozen-dropout off

``--frozen-dropout off`` switches dropout off in every frozen layer, in both arms: the cut never
applies the dropout of the layers below it, end-to-end training does (Keras runs a frozen
layer's dropout in training mode), so this isolates that one difference.

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
    "fortunes": ("defaults/text_classification.yaml", ["strategy=fixed", "data.train=dataset:fortunes/train",
                                                      "data.test=dataset:fortunes/test"], "accuracy"),
    "packages": ("defaults/text_classification.yaml", ["strategy=fixed", "data.train=dataset:debian-packages/train",
                                                      "data.test=dataset:debian-packages/test"], "accuracy"),
    "segmentation": ("defaults/segmentation.yaml", ["strategy=fixed"] + [f"data.{s}=dataset:nuclei/{s}" for s in
                                                                       ("train", "val", "test")], "mean_dice"),
    "speech": ("audio/speech_commands.yaml", [f"data.augment.{k}=0" for k in ("speed", "shift", "gain_db", "noise_prob",
                                                                           "time_masks", "freq_masks")], "accuracy"),
}
DEFAULT_ROWS = ["fashion", "fashion-noflip", "patches", "segmentation"]


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


def layer_flops(layer, inputs: list[tuple], outputs: list[tuple]) -> int:
    """Multiply-adds of one call of ``layer`` on inputs and outputs of these shapes: a Conv /
    DepthwiseConv2D / Dense from its kernel at each output position, an EinsumDense at each input
    position, a layer made of such layers (a transformer layer) from its sublayers at each of its
    output positions plus its self-attention's score and value products; 0 for the rest."""
    import keras
    import numpy as np

    convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
             keras.layers.Dense)
    if isinstance(layer, convs):
        return int(np.prod(outputs[0][1:-1]) * np.prod(layer.kernel.shape))
    if isinstance(layer, keras.layers.EinsumDense):
        return int(np.prod(inputs[0][1:-1]) * np.prod(layer.kernel.shape))
    if not isinstance(layer, keras.layers.Layer) or not outputs:
        return 0
    tokens = int(np.prod(outputs[0][1:-1]))
    total = 0
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        if isinstance(sub, (keras.layers.Dense, keras.layers.EinsumDense)):
            total += tokens * int(np.prod(sub.kernel.shape))
        elif isinstance(sub, keras.layers.MultiHeadAttention):  # self-attention: scores, then values
            total += tokens * tokens * sub.num_heads * (sub.key_dim + (sub.value_dim or sub.key_dim))
    return total


def node_shapes(model, sample) -> dict:
    """``id(tensor) -> shape`` of every tensor of functional ``model`` called on ``sample``."""
    import keras

    tensors = [t for nodes in model._nodes_by_depth.values() for node in nodes if not node.is_input
               for t in node.outputs]
    values = keras.Model(model.input, tensors)(sample)
    shapes = {id(t): tuple(v.shape) for t, v in zip(tensors, values)}
    for t, v in zip(keras.tree.flatten(model.input), keras.tree.flatten(sample)):
        shapes[id(t)] = tuple(v.shape)
    return shapes


def node_flops(model, shapes: dict | None = None):
    """``(operation, multiply-adds)`` of each node of a functional model, nested functional models
    counted whole; ``shapes`` (:func:`node_shapes`) in place of the graph's own, which may not
    know a text's length or a clip's frames."""
    import keras

    shapes = shapes or {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            op = node.operation
            if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
                yield op, sum(f for _, f in node_flops(op))
            elif node.input_tensors and node.outputs:
                yield op, layer_flops(op, [shapes.get(id(t), tuple(t.shape)) for t in node.input_tensors],
                                      [shapes.get(id(t), tuple(t.shape)) for t in node.outputs])


def model_flops(model) -> int:
    """Forward multiply-adds of a functional model of known shapes, nested functional models included."""
    return sum(f for _, f in node_flops(model))


def sample_input(parts):
    """The backbone's inputs for one example of zeros (a short text), as preprocessing gives
    them; None when the raw input's shape is not fixed (images of any size: the backbone's own
    shapes are known then)."""
    import numpy as np
    import tensorflow as tf

    x = parts.inputs
    if "string" in str(x.dtype):
        raw = tf.constant(["a short text"])
    elif None in x.shape[1:]:
        return None
    else:
        raw = np.zeros((1, *x.shape[1:]), str(x.dtype))
    return parts.preprocess(raw) if parts.preprocess is not None else raw


def share_below_cut(recipe, phase_index: int) -> float | None:
    """The share of the model's forward FLOPs (backbone and head) below the cut of phase
    ``phase_index``, at the shapes of one example (None when the backbone cannot be cut there)."""
    from tlmulti.tasks import make_task
    from tlmulti.training.cut import above_cut, find_cut
    from tlmulti.training.freezing import resolve_unfreeze

    task = make_task(recipe)
    task.derive_defaults()
    parts = task.build(["a", "b"])
    unfrozen = resolve_unfreeze(recipe.phases[phase_index].unfreeze, list(parts.groups))
    tensors, _, _ = find_cut(parts.backbone, parts.groups, unfrozen)
    if tensors is None:
        return None
    above = above_cut(parts.backbone, parts.groups, unfrozen)
    sample = sample_input(parts)
    counted = list(node_flops(parts.backbone, None if sample is None else node_shapes(parts.backbone, sample)))
    below = sum(f for op, f in counted if id(op) not in above)
    head = model_flops(parts.head) if hasattr(parts.head, "_nodes_by_depth") else 0  # (a decoder is not small)
    return below / (sum(f for _, f in counted) + head)


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


def run_row(name: str, limit: int | None, scratch: Path, real_home: Path, sets: list[str] = ()) -> dict:
    import tlmulti

    file, extra, metric = ROWS[name]
    extra = list(extra) + list(sets)
    path = ROOT / "recipes" / file
    recipe = tlmulti.load_recipe(path, overrides=extra)
    k = finetune_index(recipe)
    overrides = list(extra) + ["callbacks.verbose=0", "output.plots=false"]
    if limit and metric != "mean_dice":  # (segmentation: every tile of the few images)
        data = recipe.data
        test = limited_test(data.test, limit, data.label_column, getattr(data, "path_column", "path"),
                            scratch / name / "data")
        overrides += [f"data.limit_per_class={limit}", f"data.test={test}"]
    cut = run_arm(path, overrides + [f"phases.{k}.cache_features=true"], metric, real_home, scratch / name / "cut")
    row = {"row": name, "recipe": str(path.relative_to(ROOT)), "limit": limit, "sets": list(sets), "phase_index": k,
           "cut": cut}
    if not cut["cut_cache"].get("used"):
        row["note"] = "end to end: " + cut["cut_cache"].get("reason", "no cut cache for this task")
        return row
    row["end_to_end"] = run_arm(path, overrides + [f"phases.{k}.cache_features=false"], metric, real_home,
                                scratch / name / "e2e")
    row["share_below"] = share_below_cut(tlmulti.load_recipe(path, overrides=overrides), k)
    return row


def _row_name(r: dict) -> str:
    return r["row"] + (f" (seed {r['seed']})" if r.get("seed") is not None else "")


def seed_summary(rows: list[dict]) -> str:
    """Per row trained with several seeds: the test metric's mean and sample deviation each way,
    the mean of the per-seed differences (cut less end to end) and the mean per-epoch speed-up."""
    import numpy as np

    lines = ["| row | seeds | test end to end | test cut | cut - end to end, mean (per seed) | speed-up/epoch, mean |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["row"] for r in rows):
        pairs = [r for r in rows if r["row"] == name and "end_to_end" in r
                 and all(isinstance(a["test"], (int, float)) for a in (r["cut"], r["end_to_end"]))]
        if not pairs:
            continue
        e2e = np.array([r["end_to_end"]["test"] for r in pairs])
        cut = np.array([r["cut"]["test"] for r in pairs])
        sd = lambda v: f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else ""  # noqa: E731
        speed = np.mean([r["end_to_end"]["per_epoch"] / r["cut"]["per_epoch"] for r in pairs])
        each = ", ".join(f"{d:+.4f}" for d in cut - e2e)
        lines.append(f"| {name} | {len(pairs)} | {e2e.mean():.4f}{sd(e2e)} | {cut.mean():.4f}{sd(cut)} "
                     f"| {(cut - e2e).mean():+.4f} ({each}) | {speed:.2f}x |")
    return "\n".join(lines)


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
            lines.append(f"| {_row_name(r)} | - | {cut['per_epoch']:.1f} | - | - | - | - | - | - | "
                         f"{_score(cut)} | {r['note']} |")
            continue
        e2e, share = r["end_to_end"], r.get("share_below")
        ideal = f"{1 / (1 - share):.2f}x" if share is not None and share < 1 else "-"
        lines.append(
            f"| {_row_name(r)} | {cut['cut_cache'].get('views', 1)} | {e2e['per_epoch']:.1f} | {cut['per_epoch']:.1f} "
            f"| {cut['cache_seconds']:.1f} | {e2e['per_epoch'] / cut['per_epoch']:.2f}x "
            f"| {e2e['seconds'] / cut['seconds']:.2f}x | {'-' if share is None else f'{share:.1%}'} | {ideal} "
            f"| {_score(e2e)} | {_score(cut)} |")
    return "\n".join(lines)


def frozen_dropout_off() -> None:
    """Make every Keras ``Dropout`` layer that is not trainable (a frozen group's) pass its input through."""
    import keras

    call = keras.layers.Dropout.call

    def frozen_call(self, inputs, training=False):
        return inputs if not self.trainable else call(self, inputs, training=training)

    keras.layers.Dropout.call = frozen_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    parser.add_argument("--limit", type=int, default=None, help="examples per class (training and test)")
    parser.add_argument("--json", default=None, help="write the rows here too")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for both arms of every row (repeatable), e.g. cache.dtype=float32")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="train each row once per seed (recipe key 'seed') and print the mean difference")
    parser.add_argument("--frozen-dropout", choices=["on", "off"], default="on",
                        help="off: no dropout in frozen layers, in both arms (the cut never applies it below the cut)")
    args = parser.parse_args()
    if args.frozen_dropout == "off":
        frozen_dropout_off()

    from tlmulti import paths

    real_home = paths.home()
    scratch = Path(tempfile.mkdtemp(prefix="tlmulti-finetune-cost-"))
    rows = []
    try:
        for name in args.rows:
            for seed in args.seeds or [None]:
                sets = list(args.sets) + ([] if seed is None else [f"seed={seed}"])
                print(f"{name}: training with the cut cache and end to end{'' if seed is None else f', seed {seed}'} "
                      "...", file=sys.stderr, flush=True)
                row = run_row(name, args.limit, scratch / f"{name}-{seed}", real_home, sets)
                rows.append({**row, "seed": seed})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    if args.seeds:
        print()
        print(seed_summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
