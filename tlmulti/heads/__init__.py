"""Heads: small Keras models from backbone features to task outputs. Built fresh for each run,
so passing ``num_classes`` never loads head weights."""
