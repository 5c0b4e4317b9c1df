"""``tlmulti audio``: speech classification (train / evaluate / predict), plus ``synth`` to make a
labelled keyword set with espeak-ng and flite, and ``pretrain`` to build a source backbone."""

from __future__ import annotations

from pathlib import Path

import click

from tlmulti.cli.common import domain_group, user_errors
from tlmulti.errors import TlmultiError

audio = domain_group(
    "audio",
    "Speech classification robust to accents: train, evaluate (--group-by accent), predict, "
    "synth (make keyword data), pretrain (build a source backbone).",
    default_task="speech_classification",
    explain="Saliency over the log-mel the model computes (|gradient x (log-mel - its mean)| of the predicted class): "
            "DIR/<stem>.npy (frames x mel bands, 0..1) and DIR/<stem>.png over the spectrogram.",
)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()] if text.strip().lower() != "none" else []


@audio.command("synth")
@click.option("--words", help="Comma-separated words or phrases, e.g. yes,no,up,down.")
@click.option("--words-file", type=click.Path(dir_okay=False), help="A text file with one word or phrase per line.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create (must be empty or new).")
@click.option("--accents", help="espeak-ng accents, comma-separated, or 'none' (default: all English accents).")
@click.option("--variants", help="espeak-ng voice variants, e.g. ',f2,m3,klatt' ('' is the default voice).")
@click.option("--flite-voices", help="flite voices, comma-separated, or 'none' (default: kal,kal16,awb,rms,slt).")
@click.option("--repeats", type=int, default=1, show_default=True, help="Utterances per word, accent and variant.")
@click.option("--flite-repeats", type=int, help="Utterances per word and flite voice (default: as many as an accent).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the speed and pitch jitter.")
@click.option("--jobs", type=int, help="Engine processes run at once.")
@user_errors
def synth(words, words_file, out, accents, variants, flite_voices, repeats, flite_repeats, seed, jobs):
    """Synthesise labelled speech: OUT/<word>/*.wav and OUT/manifest.csv (path,label,speaker,accent,...).

    Every word is spoken by each espeak-ng accent and voice variant with random speed and
    pitch, and by flite's voices; the manifest's speaker and accent columns feed grouped
    evaluation (--group-by accent) and --holdout.
    """
    from tlmulti import synth as s

    items = _split(words) or []
    if words_file:
        try:
            items += [l.strip() for l in Path(words_file).read_text(encoding="utf-8").splitlines() if l.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise TlmultiError(f"Cannot read --words-file '{words_file}': {exc}; give a UTF-8 text file.") from None
    if not items:
        raise TlmultiError("Nothing to say: give --words yes,no,... or --words-file FILE.")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TlmultiError(f"Output folder '{target}' already exists and is not empty; choose another --out.")
    variant_list = s.ESPEAK_VARIANTS if variants is None else [v.strip() for v in variants.split(",")]
    rows = s.synthesize(
        items, target, accents=s.ESPEAK_ACCENTS if accents is None else _split(accents),
        variants=variant_list, flite_voices=s.FLITE_VOICES if flite_voices is None else _split(flite_voices),
        repeats=repeats, flite_repeats=flite_repeats, seed=seed, jobs=jobs,
    )
    speakers = len({r["speaker"] for r in rows})
    accents_n = len({r["accent"] for r in rows})
    click.echo(f"Wrote {len(rows)} files ({len(items)} words, {speakers} speakers, {accents_n} accents/voices) "
               f"and {target / 'manifest.csv'}.")


@audio.command("pretrain")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--name", default="audio_cnn.synth_words", show_default=True,
              help="Name the pretrained backbone is saved and offered under.")
@click.option("--data", help="Source training data (default: the recipe's, dataset:speech-words-synth/train).")
@click.option("--epochs", type=int, help="Epochs of every phase.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder of the source training.")
@click.option("--overwrite", is_flag=True, help="Replace a saved backbone of the same name.")
@user_errors
def pretrain(recipe, name, data, epochs, overrides, out, overwrite):
    """Pretrain a backbone on a large source vocabulary and save it as a named local backbone.

    RECIPE defaults to recipes/audio/source_pretrain.yaml: the compact CNN from scratch on 169
    synthetic words by 7 espeak-ng accents. Afterwards '--backbone NAME' (or the default
    recipe, for audio_cnn.synth_words) transfers it.
    """
    from tlmulti.cli.common import recipe_from_cli
    from tlmulti.recipe import recipes_dir
    from tlmulti.registry import RegistryError, get_backbone
    from tlmulti.training.pretrain import pretrain as run_pretrain

    try:  # a source-pretrained backbone names its own recipe; any other name gets the default's
        spec = get_backbone(name)
    except RegistryError:
        spec = None
    if spec is None or spec.source != "source_pretrained":
        spec = get_backbone("audio_cnn.synth_words")
    path = recipe or str(recipes_dir() / spec.options["recipe"])
    r = recipe_from_cli(path, None, overrides, data=data, epochs=epochs)
    run, folder = run_pretrain(r, name, out=out, overwrite=overwrite)
    val = (run.metrics.get("val") or {}).get("accuracy", float("nan"))
    click.echo(f"Source run: {run.dir} (val accuracy {val:.4f} on {run.metrics['data']['classes']} words)")
    click.echo(f"Saved backbone '{name}' to {folder}; use it with --backbone {name}.")
