"""Top-level commands: ``run``, ``recipes``, ``backbones``, ``weights``, ``datasets``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from tlmulti import choices
from tlmulti.cli.common import received_recipe_rule, run_training, trust_option, user_errors
from tlmulti.errors import TlmultiError


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder to create (never overwritten).")
@trust_option
@user_errors
def run(recipe, overrides, out):
    """Run RECIPE, whatever its task. A run folder's recipe.yaml reproduces that run (a SavedModel
    it names as backbone.weights loads only from the weights store, or with --trust)."""
    from tlmulti.recipe import load_recipe

    loaded = load_recipe(recipe, overrides=overrides)
    with received_recipe_rule(recipe, overrides):
        run_training(loaded, out)


@click.command("resume")
@click.argument("run_dir", type=click.Path(file_okay=False))
@trust_option
@user_errors
def resume(run_dir):
    """Continue RUN_DIR (interrupted by Ctrl-C, SIGTERM, a crash or a full disk) from its last
    checkpoint; it ends with the metrics the uninterrupted run would have had. A SavedModel its
    recipe names as backbone.weights loads only from the weights store, or with --trust."""
    from tlmulti.training.trainer import resume as resume_run

    run = resume_run(run_dir)
    click.echo(f"Run folder: {run.dir}")
    click.echo(run.headline)


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(choices.EXPORT_FORMATS), required=True)
@click.option("--quantize", type=click.Choice(choices.EXPORT_QUANTIZATIONS), default="none",
              show_default=True, help="TFLite weights: float16, dynamic int8, or int8 with a representative sample.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (model, labels.txt, export.json).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
@click.option("--check", type=int, default=300, show_default=True,
              help="Validation examples the exported file is measured on against the run (0: no check).")
@click.option("--max-drop", type=float, default=0.01, show_default=True,
              help="Metric drop against the run beyond which the export warns (0.01: one point).")
@click.option("--calibration-examples", type=int, default=300, show_default=True,
              help="int8: class-balanced training examples to calibrate on (dynamic: up to 100 of them "
                   "measure the layers a task keeps float).")
@click.option("--qat", type=int, default=0, help="int8: quantization-aware fine-tuning epochs (refused: see README).")
@trust_option
@user_errors
def export(run_dir, fmt, quantize, out, overwrite, check, max_drop, calibration_examples, qat):
    """Export the finished run RUN_DIR with its preprocessing inside (augmentation removed): it
    takes raw pixels, waveforms or (SavedModel) strings, as 'predict' does; export.json says how.
    The exported file is then measured on the run's validation examples against the run."""
    from tlmulti.export import export_run
    from tlmulti.export_quality import summary

    folder = export_run(run_dir, fmt, out, quantize=quantize, overwrite=overwrite, check=check, max_drop=max_drop,
                        calibration_examples=calibration_examples, qat=qat)
    info = json.loads((folder / "export.json").read_text())
    record = info.get(quantize) if isinstance(info.get(quantize), dict) else {}
    kept, groups = record.get("float_layers"), [g["layers"] for g in record.get("float_groups") or []]
    click.echo(f"Exported {run_dir} as {fmt} ({quantize}) to {folder} ({info['file_bytes'] / 1e6:.1f} MB); "
               f"input: {', '.join(info['input'])}."
               + (f" Kept in float: {len(kept)} layers ({', '.join(groups)})." if kept else ""))
    click.echo(f"Check: {summary(info.get('check'))}.")
    if (info.get("check") or {}).get("warning"):
        click.echo(f"Warning: {info['check']['warning']}", err=True)


@click.group()
def recipes():
    """The bundled recipes (copy one and edit it for your data)."""


def _recipe_files():
    from tlmulti.recipe import recipes_dir

    root = recipes_dir()
    return root, sorted(root.rglob("*.yaml"))


@recipes.command("list")
@user_errors
def recipes_list():
    """Recipe files with their task and first comment line."""
    import yaml

    root, files = _recipe_files()
    for path in files:
        text = path.read_text()
        first = next((l.lstrip("# ").strip() for l in text.splitlines() if l.startswith("#")), "")
        try:
            task = (yaml.safe_load(text) or {}).get("task", "?")
        except yaml.YAMLError:
            task = "invalid YAML"
        click.echo(f"{str(path.relative_to(root.parent)):<44} {task:<24} {first[:70]}")


@recipes.command("show")
@click.argument("name")
@user_errors
def recipes_show(name):
    """Print a bundled recipe: a task's default recipe (by task name, e.g. image_classification)
    or a named one (by file name, with or without .yaml, e.g. fashion_mnist)."""
    from tlmulti.recipe import default_recipe_path
    from tlmulti.registry import list_tasks

    if name in {t.name for t in list_tasks()}:
        click.echo(default_recipe_path(name).read_text(), nl=False)
        return
    root, files = _recipe_files()
    for path in files:
        if name in (path.name, path.stem, str(path.relative_to(root))):
            click.echo(path.read_text(), nl=False)
            return
    raise TlmultiError(f"No bundled recipe named '{name}'; see 'tlmulti recipes list'.")


@click.group()
def backbones():
    """Registered backbones and where their weights come from."""


@backbones.command("list")
@click.option("--family", help="Only backbones for this task family (vision, segmentation, text, audio).")
@user_errors
def backbones_list(family):
    """Name, source, families, and whether the weights are available offline here."""
    from tlmulti.backbones import weights_status
    from tlmulti.registry import list_backbones

    click.echo(f"{'name':<40} {'source':<19} {'families':<22} {'offline':<8} description")
    for spec in sorted(list_backbones(family), key=lambda s: s.name):
        ok, _ = weights_status(spec)
        click.echo(f"{spec.name:<40} {spec.source:<19} {','.join(spec.families):<22} "
                   f"{'yes' if ok else 'no':<8} {spec.description}")


@backbones.command("save")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--overwrite", is_flag=True, help="Replace a saved backbone of the same name.")
@user_errors
def backbones_save(run_dir, name, overwrite):
    """Save the fine-tuned backbone of RUN_DIR as a local backbone called NAME."""
    from tlmulti.runs import save_run_backbone

    folder = save_run_backbone(run_dir, name, overwrite=overwrite)
    click.echo(f"Saved backbone '{name}' to {folder}; use it with --backbone {name}.")


@click.group()
def weights():
    """Offline weight handling: what is here, where it is looked for, importing a copy."""


@weights.command("list")
@user_errors
def weights_list():
    """Each backbone with its weight status and location."""
    from tlmulti.backbones import weights_status
    from tlmulti.registry import list_backbones

    for spec in sorted(list_backbones(), key=lambda s: s.name):
        ok, where = weights_status(spec)
        click.echo(f"{spec.name:<40} {'available' if ok else 'missing':<10} {where}")


@weights.command("path")
@click.argument("name")
@user_errors
def weights_path(name):
    """Where the weights of backbone NAME are imported to (and looked for first)."""
    from tlmulti.backbones import store_dir, weights_status
    from tlmulti.registry import get_backbone

    spec = get_backbone(name)
    ok, where = weights_status(spec)
    click.echo(f"store:  {store_dir(spec)}")
    click.echo(f"status: {'available' if ok else 'missing'} ({where})")


@weights.command("lock")
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--backbone", "names", multiple=True, help="A backbone name to lock (besides the recipes').")
@user_errors
def weights_lock(recipes, names):
    """Print a lockfile (JSON) of the weights files RECIPES (or --backbone NAMEs) load here, with
    their sha256: 'tlmulti weights lock recipe.yaml > weights.lock', then train with
    --weights-lock weights.lock to refuse any other file."""
    from tlmulti.recipe import load_recipe
    from tlmulti.registry import get_backbone
    from tlmulti.training.card import weights_entries

    targets = [(get_backbone(n), None) for n in names]
    for path in recipes:
        r = load_recipe(path)
        targets.append((get_backbone(r.backbone.name), r.backbone.weights))
    if not targets:
        raise TlmultiError("Give recipe files or --backbone NAME to lock.")
    entries = []
    for spec, weights in targets:
        found = weights_entries(spec, weights)
        if not found and spec.source != "builder":
            raise TlmultiError(f"The weights of backbone '{spec.name}' are not on this machine; nothing to lock "
                               "(see 'tlmulti weights list').")
        entries += [e for e in found if e not in entries]
    click.echo(json.dumps({"tlmulti_weights_lock": 1, "weights": entries}, indent=2))


@weights.command("import")
@click.argument("name")
@click.argument("path", type=click.Path())
@click.option("--force", is_flag=True, help="Replace weights imported before.")
@user_errors
def weights_import(name, path, force):
    """Copy a weights file, preset folder or SavedModel at PATH into the store for backbone NAME.

    Typical use on an air-gapped machine: download the weights elsewhere (Keras .h5, a keras-hub
    or Hugging Face preset folder, a TF-Hub SavedModel), carry them over, import them once.
    """
    from tlmulti.backbones import store_dir
    from tlmulti.registry import get_backbone

    spec = get_backbone(name)
    src = Path(path).expanduser()
    if not src.exists():
        raise TlmultiError(f"'{src}' does not exist; give the downloaded weights file or folder.")
    dest = store_dir(spec)
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise TlmultiError(f"Weights for '{name}' were already imported to '{dest}'; pass --force to replace them.")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest / src.name)
    click.echo(f"Imported {src} for backbone '{name}' into {dest}.")


@click.group()
def datasets():
    """Datasets built from installed packages, usable in recipes as dataset:NAME/SPLIT."""


@datasets.command("list")
@user_errors
def datasets_list():
    from tlmulti import paths
    from tlmulti.registry import list_datasets

    for spec in list_datasets():
        ready = (paths.dataset_root() / spec.name / ".complete").exists()
        click.echo(f"{spec.name:<22} {'ready' if ready else 'not built':<10} {','.join(spec.splits):<16} {spec.description}")


@datasets.command("prepare")
@click.argument("name")
@click.option("--force", is_flag=True, help="Build it again.")
@user_errors
def datasets_prepare(name, force):
    """Build dataset NAME now (recipes also build it on first use)."""
    from tlmulti.datasets import prepare

    click.echo(f"{name}: {prepare(name, force=force)}")


@click.group()
def cache():
    """Caches under $TLMULTI_HOME/cache: frozen-phase backbone features (features/) and the
    decoded slices of streamed volumes (slices/)."""


@cache.command("list")
@user_errors
def cache_list():
    """Entries: key, what (backbone, or the file whose slices), examples, size, dtype, last use."""
    from pathlib import Path

    from tlmulti.data import cache as feature_cache

    found = feature_cache.entries()
    unfinished = feature_cache.partials()
    where = " and ".join(str(r) for r in feature_cache.roots())
    if not found and not unfinished:
        click.echo(f"Nothing cached in {where}.")
        return
    click.echo(f"{'key':<34}{'what':<36}{'examples':>9}{'MiB':>9}  {'dtype':<12}last used")
    for m in unfinished:
        state = f"writing, pid {m['pid']}" if m["alive"] else f"pid {m['pid']} ended"
        click.echo(f"{m['key']:<34}{f'(partial: {state})':<36}{'':>9}{m['bytes'] / 2**20:>9.1f}")
    for m in found:
        if m.get("corrupt"):
            click.echo(f"{m['key']:<34}{'(corrupt: no meta.json)':<36}{'':>9}{m['bytes'] / 2**20:>9.1f}")
            continue
        desc = m.get("description", {})
        what = f"slices of {Path(desc['file']).name}" if "file" in desc else f"features: {desc.get('backbone', '')}"
        dtypes = ",".join(sorted({o["dtype"].lstrip("<>|=") for o in m.get("outputs", [])}))
        click.echo(f"{m['key']:<34}{what[:35]:<36}{m.get('examples', 0):>9}"
                   f"{m.get('bytes', 0) / 2**20:>9.1f}  {dtypes:<12}{m.get('last_used', '')}")
    total = sum(m.get("bytes", 0) for m in found + unfinished)
    partial = f" and {len(unfinished)} partial ('tlmulti cache clear' removes those whose process ended)" if unfinished else ""
    click.echo(f"{len(found)} entries{partial}, {total / 2**20:.1f} MiB in {where}")


@cache.command("clear")
@click.argument("keys", nargs=-1)
@user_errors
def cache_clear(keys):
    """Delete the entries KEYS (every entry when none is given), and the partial ones of those keys
    whose process has ended; runs compute them again when needed."""
    from tlmulti.data import cache as feature_cache

    n, freed = feature_cache.clear(list(keys))
    click.echo(f"Deleted {n} cache entr{'y' if n == 1 else 'ies'} ({freed / 2**20:.1f} MiB freed).")
