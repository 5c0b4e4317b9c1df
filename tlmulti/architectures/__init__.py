"""Keras model definitions of pretrained architectures ported to Keras 3; no weights loading here."""
