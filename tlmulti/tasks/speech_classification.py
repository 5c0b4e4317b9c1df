"""Speech classification: short utterances (commands, keywords) from class folders of audio files
or a ``path,label[,speaker][,accent]`` manifest, with a pooled softmax head.

The exported model takes mono waveforms at the backbone's sample rate, cut to the recipe's clip
length: ``(batch, samples)`` float32. Log-mel features (when the backbone wants them) and the
per-utterance normalisation are a layer inside the model, and the resolved recipe saved with
the run holds the sample rate, clip length and trimming, so ``predict`` takes raw audio files
of any format, rate and channel count.

Robustness to unseen accents and speakers: waveform augmentation (speed, shift, gain, noise)
and SpecAugment act only while training; evaluation reports accuracy per accent and per speaker
and the worst group; ``data.holdout`` (``--holdout accent=VALUE``) keeps a group out of training.

A phase that unfreezes only the top groups of a functional backbone (Whisper, the log-mel CNN)
trains on the cached cut below them (:mod:`tlmulti.training.cut`) when no augmentation is on;
with waveform augmentation or SpecAugment and ``cache_features: auto`` it trains end to end (a
cached cut cannot augment), and ``cache_features: true`` caches anyway, without augmentation.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe(task="speech_classification",
                                 overrides=["data.train=my_commands/", "phases.1.epochs=2"])
    run = tlmulti.train(recipe, out="runs/commands")
    print(tlmulti.predict("runs/commands", ["clip.wav"])[0]["top"][0])
"""

from __future__ import annotations

import math

import numpy as np

from tlmulti.data import Examples
from tlmulti.errors import RecipeError
from tlmulti.tasks.base import ModelParts, resolve_groups
from tlmulti.tasks.classification import ClassificationTask
from tlmulti.tasks.exporting import WaveformExport


class SpeechClassification(WaveformExport, ClassificationTask):
    name = "speech_classification"
    family = "audio"
    cut_cache = "on request"  # cache_features: true; auto trains end to end: no time saved (README, "Cut cache")
    explains = True
    explain_note = "Saliency maps (|gradient x log-mel|): {n} .npy and .png in {dir}"

    def explain(self, model, items, out_dir) -> list[dict]:
        """Time-frequency saliency over the model's log-mel, per file (:mod:`tlmulti.tasks.speech_explain`)."""
        from tlmulti.tasks.speech_explain import explain_clips

        return explain_clips(self, model, items, out_dir)

    # -- contract -------------------------------------------------------------------------------
    def contract(self):
        """The resolved :class:`~tlmulti.data.audio.AudioContract`: recipe values over the backbone's."""
        from tlmulti.data.audio import FRONTENDS, AudioContract

        c = AudioContract.from_dict(self.spec.input)
        data = self.recipe.data
        if data.clip_seconds == "auto":
            self.derive_defaults()
        if data.sample_rate is not None:
            c.sample_rate = data.sample_rate
        if data.clip_seconds is not None:
            c.clip_seconds = data.clip_seconds
        c.trim_silence, c.trim_db = data.trim_silence, data.trim_db
        for key, value in vars(data.features).items():
            if value is not None:
                setattr(c, key, value)
        if c.frontend not in FRONTENDS:
            raise RecipeError(f"Backbone '{self.spec.name}' has an unknown audio frontend {c.frontend!r}.")
        if c.sample_rate <= 0 or c.clip_seconds <= 0:
            raise RecipeError("Keys 'data.sample_rate' and 'data.clip_seconds' must be positive.")
        limit = self.spec.input.get("max_seconds")
        if limit and c.clip_seconds > limit:
            raise RecipeError(f"Key 'data.clip_seconds' is {c.clip_seconds} but backbone '{self.spec.name}' "
                              f"takes at most {limit} s; shorten the clips.")
        return c

    def derive_defaults(self) -> None:
        """``clip_seconds: auto`` from the training files' durations (their headers only)."""
        from tlmulti.data.audio import AUDIO_SUFFIXES, durations
        from tlmulti.data.manifest import resolve_source, rows_from

        data = self.recipe.data
        if data.clip_seconds != "auto":
            return
        if not data.train:
            raise RecipeError("Key 'data.clip_seconds' is auto but there is no training data to measure; "
                              "give --data or a number of seconds.")
        rows = rows_from(resolve_source(data.train), AUDIO_SUFFIXES, label_column=data.label_column,
                         path_column=data.path_column)
        seconds = durations([r["path"] for r in rows])
        limit = min(10.0, float(self.spec.input.get("max_seconds") or 10.0))
        p95 = float(np.percentile(seconds, 95)) if len(seconds) else 1.0
        data.clip_seconds = min(limit, max(0.5, math.ceil(p95 * 10 - 1e-6) / 10))

    def example_content(self, examples, i):
        return {"kind": "audio", "audio": examples.x[i], "sample_rate": self.contract().sample_rate}

    def input_summary(self, train, parts=None) -> dict:
        from tlmulti.data.audio import durations

        seconds = durations(train.meta.get("path", []))
        if not len(seconds):
            return {}
        clip = float(self.recipe.data.clip_seconds or self.contract().clip_seconds)
        return {"audio_seconds": {"median": round(float(np.median(seconds)), 3),
                                  "p95": round(float(np.percentile(seconds, 95)), 3),
                                  "max": round(float(seconds.max()), 3), "clip_seconds": clip,
                                  "longer_than_clip": int((seconds > clip).sum()),
                                  "trim_silence": bool(self.recipe.data.trim_silence)}}

    def pin_contract(self, c) -> None:
        """Write the resolved contract into the recipe, so the recipe saved with the run states the
        sample rate, clip length and log-mel parameters explicitly (whatever the backbone's
        preset says later) and ``evaluate`` / ``predict`` read audio exactly as training did."""
        from dataclasses import replace

        data = self.recipe.data
        data.sample_rate, data.clip_seconds = c.sample_rate, c.clip_seconds
        if c.frontend == "log_mel":
            data.features = replace(data.features, **{k: getattr(c, k) for k in vars(data.features)})

    # -- data -----------------------------------------------------------------------------------
    def read(self, ref, classes=None, labelled=True) -> Examples:
        from tlmulti.data.audio import AUDIO_SUFFIXES, audio_files, read_clips

        return self.read_files(ref, classes, labelled, AUDIO_SUFFIXES, audio_files,
                               lambda paths: read_clips(paths, self.contract(), self.recipe.data.streaming))

    def read_inputs(self, items):
        from tlmulti.data.audio import audio_files, load_clips

        files = [f for item in items for f in audio_files(item)]
        return load_clips(files, self.contract()), [str(f) for f in files]

    # -- model ----------------------------------------------------------------------------------
    def load_backbone(self, input_shape=None, feature_layers=None):
        model = super().load_backbone(input_shape=input_shape)
        limit = getattr(model, "max_encoder_sequence_length", None)
        c = self.contract()
        if limit and c.frames > limit:
            raise RecipeError(f"Key 'data.clip_seconds' gives {c.frames} log-mel frames but backbone "
                              f"'{self.spec.name}' takes at most {limit}; shorten the clips.")
        return model

    def build(self, classes) -> ModelParts:
        import keras

        from tlmulti.layers.audio import LogMelSpectrogram, SpecAugment, WaveformAugment

        c = self.contract()
        self.pin_contract(c)
        aug = self.recipe.data.augment
        seed = self.recipe.seed
        inputs = keras.Input(shape=(c.clip_samples,), name="waveform")
        preprocess = None
        if c.frontend == "log_mel":
            backbone = self.load_backbone(input_shape=(c.frames, c.n_mels))
            expected = backbone.input_shape[-1] if not isinstance(backbone.input_shape, list) else None
            if expected is not None and expected != c.n_mels:
                raise RecipeError(
                    f"Backbone '{self.spec.name}' takes {expected} mel bands but the recipe asks for {c.n_mels} "
                    f"(key data.features.n_mels); remove the key or set it to {expected}."
                )
            frontend = LogMelSpectrogram(**c.frontend_config(), name="log_mel")
            if aug.spec_enabled():
                preprocess = keras.Sequential(
                    [frontend, SpecAugment(aug.time_masks, aug.time_width, aug.freq_masks, aug.freq_width,
                                           seed=seed, name="spec_augment")], name="preprocess")
            else:
                preprocess = frontend
        else:
            backbone = self.load_backbone(input_shape=(c.clip_samples,))
        augment = None
        if aug.waveform_enabled():
            augment = WaveformAugment(aug.speed, aug.shift, aug.gain_db, aug.noise_prob, aug.snr_db,
                                      seed=seed, name="augment")
        head = self.build_head(backbone, len(classes))
        return ModelParts(inputs=inputs, backbone=backbone, head=head, preprocess=preprocess, augment=augment,
                          groups=resolve_groups(backbone, self.spec))

    # -- evaluation -----------------------------------------------------------------------------
    def baseline_features(self, examples):
        from tlmulti.evaluation.baseline import log_mel_features

        return "log_mel", "dense", log_mel_features(examples.x, self.contract().sample_rate)

    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        """Classification metrics; grouped by ``group_by`` (or ``data.group_column`` when the data
        has that column), plus
        ``groups``: accuracy per value and the worst group of every ``data.report_groups``
        column the data has (accent, speaker)."""
        from tlmulti.evaluation.classification import grouped_accuracy

        probs = self.probabilities(model, examples.x)
        metrics = self.metrics_from(probs, examples, group_by)
        column = self.group_column(examples, group_by)
        pred = probs.argmax(axis=1)
        extra = {}
        for name in dict.fromkeys(([column] if column else []) + list(self.recipe.data.report_groups)):
            values = examples.meta.get(name)
            if values is None or any(v in (None, "") for v in values):
                continue
            extra[name] = grouped_accuracy(np.asarray(examples.y), pred, values, name)
        if extra:
            metrics["groups"] = {k: {"by_group": v["by_group"], "worst_group": v["worst_group"]}
                                 for k, v in extra.items()}
        return metrics

    def format_metrics(self, metrics: dict) -> str:
        text = super().format_metrics(metrics)
        lines = []
        for name, g in (metrics.get("groups") or {}).items():
            if name == metrics.get("group_by"):
                continue
            ranked = sorted(g["by_group"].items(), key=lambda kv: kv[1]["accuracy"])
            lines += ["", f"{name} ({len(ranked)} groups, worst {min(5, len(ranked))})"
                          f"{'':<4}{'accuracy':>10}{'n':>9}"]
            for value, v in ranked[:5]:
                lines.append(f"{str(value)[:23]:<24}{v['accuracy']:>10.3f}{v['n']:>9}")
            w = g["worst_group"]
            lines.append(f"worst {name}: {w['group']} ({w['accuracy']:.3f})")
        return text + ("\n" + "\n".join(lines) if lines else "")
