"""Training shared by every task: phases, freezing by named groups, feature cache, optimizers."""

from tlmulti.training.pretrain import train
from tlmulti.training.trainer import fine_tune

__all__ = ["fine_tune", "train"]
