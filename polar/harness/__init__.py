"""lm-evaluation-harness integration: evaluate any harness task on a model run under a program or a predictor.

- :class:`~polar.harness.model.PolarLM`, registered with lm-eval as the model ``polar`` by :func:`register`
  (lm-eval 0.4.x discovers no plugins: ``polar lm-eval`` registers it, then runs lm-eval's own command line);
- offline task configs under ``tasks/`` (:data:`TASKS_DIR`): ``polar_arc_easy``, ``polar_arc_challenge``,
  ``polar_gsm8k``, ``polar_mmlu_pro_math``, the harness's own prompts and metrics over local files
  (:mod:`polar.harness.data`);
- :mod:`polar.harness.sweep`: a list of programs or a menu on one task, as one table and a plot.

The Python route::

    import lm_eval
    from polar.harness import register, task_manager

    register()
    results = lm_eval.simple_evaluate(
        model="polar",
        model_args={"model": "smollm2-135m", "program": "0-4,8-29"},  # a dict: commas are fine here
        tasks=["polar_arc_easy"],
        task_manager=task_manager(),
        limit=50,
    )
    results["results"]["polar_arc_easy"]["acc,none"], results["config"]["polar"]["tasks"]["polar_arc_easy"]
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_NAME", "TASKS_DIR", "TASK_NAMES", "register", "task_manager"]

MODEL_NAME = "polar"
TASKS_DIR = Path(__file__).with_name("tasks")
TASK_NAMES = ("polar_arc_easy", "polar_arc_challenge", "polar_gsm8k", "polar_mmlu_pro_math")


def register() -> None:
    """Register :class:`~polar.harness.model.PolarLM` with lm-eval's model registry as ``polar`` (idempotent).

    lm-eval's own models register first: the registry imports them only while it is empty, so registering ours
    into an empty registry would hide ``hf`` and the others.
    """
    import lm_eval.models  # noqa: F401 - fills the registry with lm-eval's own models
    from lm_eval.api.registry import model_registry

    target = "polar.harness.model:PolarLM"
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=target)


def task_manager(data: str | Path | None = None, include_defaults: bool = True):
    """An lm-eval ``TaskManager`` that also knows the shipped offline tasks.

    Args:
        data: the benchmark data folder for the shipped tasks (default: see :func:`polar.harness.data.data_dir`).
        include_defaults: also index the harness's own tasks (a few seconds); False gives only the shipped ones.
    """
    from lm_eval.tasks import TaskManager

    metadata = {"data_dir": str(data)} if data else None
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata=metadata)
