"""Where a step state's path leads in the pipelines serving now (see ``engine.Run``).

A state's path names the step and, under it, what that step ran::

    report              step 'report' of the execution's pipeline
    sub/inner           step 'inner' of the pipeline that step 'sub' runs
    items@1/0           item 0 of try 1 of map step 'items' (an approval in it)
    items@1/0/inner     step 'inner' of the pipeline that item runs
    plan@2/3/search     action 'search' of iteration 3 of try 2 of loop step 'plan'

A reload may remove or rename a step at any of these levels; a resumed run closes the
states it leaves (``Run._drop_removed``).
"""

from __future__ import annotations

from collections.abc import Mapping

from aigw.compiler.pipeline_graph import Loop, MapStep, Pipeline, Step, SubPipeline


def missing_from(pipelines: Mapping[str, Pipeline], pipeline: Pipeline, path: str) -> str | None:
    """The name of the pipeline that no longer has a step on the way to ``path`` (from
    ``pipeline``, the execution's own), or None while every one is there."""
    head, _, rest = path.partition("/")
    name, tried, _ = head.partition("@")
    step = pipeline.steps.get(name)
    if step is None:
        return pipeline.name
    if not rest:
        return None
    if tried:  # under a try of a map or loop step: the inline step of an item or action
        inline, rest = _inline(step, rest)
        if inline is None:
            return pipeline.name
        if not rest:
            return None
        step = inline
    action = step.action
    if not isinstance(action, SubPipeline):  # it runs no pipeline now, so nothing under it
        return pipeline.name
    called = pipelines.get(action.pipeline)
    if called is None:
        return action.pipeline
    return missing_from(pipelines, called, rest)


def _inline(step: Step, rest: str) -> tuple[Step | None, str]:
    """The inline step that ``rest`` (after ``name@try/``) names, and what follows it."""
    action = step.action
    if isinstance(action, MapStep):
        return action.step, rest.partition("/")[2]  # past the item's index
    if isinstance(action, Loop):
        chosen, _, after = rest.partition("/")[2].partition("/")  # past the iteration
        return action.actions.get(chosen), after
    return None, ""
