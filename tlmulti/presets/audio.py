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
    """Layer groups of a Whisper encoder: the conv/position embedding, then one per transformer layer."""
    groups = {"embed": ["encoder_token_embedding_conv_layer_.*", "encoder_padder",
                        "encoder_position_embedding", "encoder_embeddings_.*"]}
    for i in range(num_layers):
        names = [f"transformer_encoder_layer_{i}"]
        if i == num_layers - 1:
            names.append("encoder_layer_norm")
        groups[f"layer{i}"] = names
    return groups


_CNN_CONTRACT = {"sample_rate": 16000, "frontend": "log_mel", "n_mels": 40, "n_fft": 512, "hop_length": 160,
                 "fmin": 20.0, "fmax": 8000.0, "scale": "db", "top_db": 80.0, "normalize": "utterance"}
_CNN_GROUPS = cnn_groups(4)
_CNN_OPTIONS = {"channels": [16, 32, 64, 128], "convs_per_block": 1}

register_backbone(
    "audio_cnn.scratch", source="builder", families=("audio",),
    builder="tlmulti.architectures.audio_cnn:build_audio_cnn", input=_CNN_CONTRACT, layer_groups=_CNN_GROUPS,
    options=_CNN_OPTIONS,
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
        description=f"Whisper {_what} encoder (keras-hub preset; 680k h of accent-diverse speech; download)",
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
    default_backbone="audio_cnn.synth_words", default_recipe="audio/speech_commands.yaml",
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
