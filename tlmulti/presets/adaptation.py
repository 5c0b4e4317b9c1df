"""Datasets for domain-adaptation recipes. Data only."""

from tlmulti.registry import register_dataset

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
