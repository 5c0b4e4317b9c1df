"""Domain-adaptation methods and the datasets of the adaptation recipes. Data only."""

from tlmulti.registry import register_adaptation, register_dataset

register_adaptation("none", implementation="", description="no adaptation: train on the source data only")
register_adaptation("auto", implementation="",
                    description="run source-only and every applicable method; keep the best label-free target score")
for _name, _cls, _what in (
    ("adabn", "AdaBN", "re-estimate every BatchNorm layer's moving statistics on target data"),
    ("test_time_bn", "TestTimeBN", "mix source and target BatchNorm statistics (prior N=16)"),
    ("dann", "DANN", "domain classifier behind gradient reversal on pooled backbone features"),
    ("coral", "CORAL", "match source and target feature covariances"),
    ("mmd", "MMD", "multi-kernel maximum mean discrepancy between source and target features"),
    ("entropy", "Entropy", "information maximisation: confident, diverse target predictions"),
    ("self_training", "SelfTraining", "train on confident target pseudo-labels"),
):
    register_adaptation(_name, implementation=f"tlmulti.training.adaptation.methods:{_cls}", description=_what)

register_dataset(
    "fashion-mnist-scanner", builder="tlmulti.datasets.fashion_scanner:build", splits=("target", "test"),
    description="Fashion-MNIST as from another scanner (inverted, blurred, noisy): 1,000 unlabelled target / "
                "1,000 labelled test PNGs",
    source="Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
register_dataset(
    "nuclei-shift", builder="tlmulti.datasets.nuclei_shift:build", splits=("target", "test"),
    description="Nuclei image with a simulated microscope shift (illumination ramp, gamma, blur, noise)",
    source="PyPI wheel stardist==0.9.2, as for 'nuclei'",
)
register_dataset(
    "speech-flite-adapt", builder="tlmulti.datasets.speech_adapt:build", splits=("target", "test"),
    description="Flite voices of the 10 commands: 200 unlabelled target / 200 labelled test recordings",
    source="Debian package flite, via speech-commands-synth",
)
