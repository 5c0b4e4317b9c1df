"""Tasks: each declares its data reader, model parts and metrics; the trainer is shared."""

from tlmulti import registry
from tlmulti.tasks.base import ModelParts, Task
from tlmulti.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "ModelParts", "Task", "make_task", "task_class"]


def task_class(task_name: str) -> type[Task]:
    """The class that implements the registered task ``task_name``."""
    return registry.resolve(registry.get_task(task_name).implementation)


def make_task(recipe, spec=None) -> Task:
    """The task object of ``recipe`` (its class from the registry), optionally with ``spec``
    as the backbone spec instead of the registry's."""
    return task_class(recipe.task)(recipe, spec=spec)
