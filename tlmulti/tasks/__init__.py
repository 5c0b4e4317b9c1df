"""Tasks: each declares its data reader, model parts and metrics; the trainer is shared."""

from tlmulti.tasks.base import ClassificationTask, ModelParts, Task

__all__ = ["ClassificationTask", "ModelParts", "Task"]
