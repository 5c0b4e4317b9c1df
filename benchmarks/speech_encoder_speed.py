"""Seconds per clip of each speech backbone's forward pass (front end included), on this machine.

Whisper tiny.en on a 1 s window (what the recipes use) and on Whisper's usual 30 s of padding,
speech_embedding and the compact CNN on 1 s clips; batches of ``--batch`` clips, after a warm-up
call, mean of ``--repeats`` calls, all in one process.

    python benchmarks/speech_encoder_speed.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def per_clip(name: str, seconds: float, batch: int, repeats: int) -> float:
    import keras
    import numpy as np

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    from tlmulti.data.audio import AudioContract
    from tlmulti.layers.audio import LogMelSpectrogram

    spec = registry.get_backbone(name)
    contract = AudioContract.from_dict({**spec.input, "clip_seconds": seconds})
    inputs = keras.Input((contract.clip_samples,))
    if contract.frontend == "log_mel":
        backbone = load_backbone(spec, input_shape=(contract.frames, contract.n_mels))
        x = backbone(LogMelSpectrogram(**contract.frontend_config())(inputs))
    else:
        backbone = load_backbone(spec, input_shape=(contract.clip_samples,))
        x = backbone(inputs)
    model = keras.Model(inputs, x)
    waves = np.random.default_rng(0).normal(0, 0.1, (batch, contract.clip_samples)).astype("float32")
    model.predict_on_batch(waves)
    t = time.perf_counter()
    for _ in range(repeats):
        model.predict_on_batch(waves)
    return (time.perf_counter() - t) / (repeats * batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [("whisper_tiny_en.bundled", 1.0), ("whisper_tiny_en.bundled", 30.0), ("speech_embedding.google", 1.0),
            ("audio_cnn.synth_words", 1.0)]
    results = {}
    for name, seconds in rows:
        results[(name, seconds)] = per_clip(name, seconds, args.batch, args.repeats)
        print(f"{name:<26} {seconds:>5.1f} s clips: {results[(name, seconds)]:.4f} s per clip", flush=True)
    w1, w30 = results[("whisper_tiny_en.bundled", 1.0)], results[("whisper_tiny_en.bundled", 30.0)]
    print(f"Whisper on a 1 s window instead of 30 s of padding: {w30 / w1:.1f}x less time per clip")


if __name__ == "__main__":
    main()
