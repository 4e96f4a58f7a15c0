"""Every task answers the same questions, so the core never asks which kind a task is."""

import inspect

import pytest

from harness import tasks
from harness.config import UsageError
from harness.tasks import LLMTask

INTERFACE = [name for name in vars(LLMTask) if not name.startswith("_")]


@pytest.mark.parametrize("name", tasks.names())
def test_every_task_has_the_whole_interface(name):
    task = tasks.get(name)
    for attr in INTERFACE:
        ours, theirs = getattr(LLMTask, attr), getattr(type(task), attr)
        if callable(ours):
            assert list(inspect.signature(theirs).parameters) == list(inspect.signature(ours).parameters), attr
        else:
            assert isinstance(getattr(task, attr), type(ours)), attr


def test_known_tasks_and_unknown_task():
    assert {"gsm8k", "toy-linear", "toy-linear-illcond"} <= set(tasks.names())
    with pytest.raises(UsageError, match="unknown task 'mmlu': choose one of gsm8k"):
        tasks.get("mmlu")


def test_resources_per_trial():
    llm, toy = tasks.get("gsm8k"), tasks.get("toy-linear")
    assert llm.resources(0, 1, remote=True) == (4, 1) and llm.resources(3, 0, remote=True) == (3, 0)
    assert toy.resources(0, 0, remote=False) == (1, 0) and toy.reuse_workers and not llm.reuse_workers
