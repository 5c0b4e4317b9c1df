"""Tasks: each declares its data reader, model parts and metrics; the trainer is shared."""

from tlmulti.tasks.base import ClassificationTask, ModelParts, Task

__all__ = ["ClassificationTask", "ModelParts", "Task", "make_task"]


def make_task(recipe, spec=None) -> Task:
    """The task object of ``recipe`` (its class from the registry), optionally with ``spec``
    as the backbone spec instead of the registry's."""
    from tlmulti.recipe import task_class

    return task_class(recipe.task)(recipe, spec=spec)
