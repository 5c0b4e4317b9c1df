"""Domain-adaptation methods and the datasets of the adaptation recipes. Data only."""

from tlmulti.registry import register_adaptation, register_dataset

register_adaptation("none", implementation="", description="no adaptation: train on the source data only")
register_adaptation(
    "adabn", implementation="tlmulti.training.adaptation:AdaBN",
    description="re-estimate every BatchNorm layer's moving statistics on target data after training",
)
register_adaptation(
    "dann", implementation="tlmulti.training.adaptation:DANN",
    description="domain classifier behind gradient reversal, in the phases that train the backbone",
)
register_adaptation(
    "coral", implementation="tlmulti.training.adaptation:CORAL",
    description="match source and target feature covariances, in the phases that train the backbone",
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
