"""Readers and splits shared by every domain.

A reader turns a folder or manifest into :class:`Examples`: in-memory inputs, integer labels,
the class names and per-example metadata (path, domain, speaker, ...). Transfer learning works on
little labelled data, so examples are held in memory and batched with ``tf.data`` by the trainer.
"""

from tlmulti.data.examples import (
    Examples,
    concat,
    encode_labels,
    group_split,
    limit_per_class,
    split_holdout,
    stratified_split,
)
from tlmulti.data.manifest import list_class_folders, read_manifest, resolve_source

__all__ = [
    "Examples",
    "concat",
    "encode_labels",
    "group_split",
    "limit_per_class",
    "list_class_folders",
    "read_manifest",
    "resolve_source",
    "split_holdout",
    "stratified_split",
]
