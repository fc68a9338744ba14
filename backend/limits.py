"""What one request may ask of the model, checked before any work: HTTP 400 naming the field, its
limit and the fix (README, "Limits").

The library checks every setting's range whenever settings are built (``Runtime.overrides``) and
each image's cost again before its first UNet call. Up front, from the project alone, the backend
checks its labels (``MAX_LABELS`` per Image, ``MAX_WORDS_PER_LABEL``), one image's predicted cost at
its settings (once the model is loaded: the estimate reads the model's layers) and, for a /predict,
the request as a whole: its tasks x one task's cost against ``SEEDIFF_MAX_REQUEST_COST``, and no
more images than the model's queue can ever hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seediff_core import limits

from .errors import RequestError
from .settings import REQUEST_COST_ENV

if TYPE_CHECKING:
    from .controls import ImageTarget
    from .runtime import ProjectOptions, Runtime

LIMITS = "README, 'Limits'"
EVERYTHING_PROXY = ["segment"]  # segment_everything's one empty prompt costs what one word's pass does


def check_labels(targets: list[ImageTarget], options: ProjectOptions, synonyms) -> None:
    """RequestError for an Image with more than ``MAX_LABELS`` labels or a label with more than
    ``MAX_WORDS_PER_LABEL`` prompt words (its own or ``predicted_values``, extra params' prompts,
    synonyms)."""
    if options.everything:  # unlabelled segments: the labels are never prompts
        return
    for target in targets:
        try:
            limits.check_labels(target.labels)
        except ValueError as exc:
            raise RequestError("label_config", f"Image {target.object_name!r}: {exc}",
                               f"at most {limits.MAX_LABELS} labels per Image: split the labels over several "
                               f"projects ({LIMITS})") from None
        words = {**target.words, **options.words}
        for label in target.labels:
            try:
                limits.check_labels([label], synonyms, words)
            except ValueError as exc:
                field = (f"extra_params.prompts.{label}" if label in options.words
                         else "extra_params.synonyms" if label in synonyms else "label_config")
                raise RequestError(field, str(exc), f"keep its {limits.MAX_WORDS_PER_LABEL} most telling words") from None


def task_cost(segmenter, targets: list[ImageTarget], options: ProjectOptions) -> float:
    """Units of one task (every Image of it) at the project's settings, each image at its upper
    bound, the model's native square at ``working_size``; RequestError when one image alone is over
    the per-image limits (``SEEDIFF_MAX_IMAGE_COST``, ``SEEDIFF_MAX_ATTENTION_GIB``)."""
    units = 0.0
    for target in targets:
        labels, words = (EVERYTHING_PROXY, None) if options.everything else \
            (target.labels, {**target.words, **options.words})
        cost = segmenter.estimate_cost(labels, words=words, **options.settings)
        try:
            limits.check_cost(cost)
        except limits.CostLimitError as exc:
            problem, _, fix = str(exc).rpartition("; ")  # the library's message ends with what to lower
            raise RequestError("extra_params", problem or str(exc), fix if problem else None) from None
        units += cost.units
    return units


def check_request(runtime: Runtime, targets: list[ImageTarget], options: ProjectOptions,
                  tasks: int | None = None) -> None:
    """RequestError when the project's labels or one image's cost exceed the limits, or, given
    ``tasks`` (a /predict), the request's total does. Without ``tasks`` the cost is checked only if
    the model is loaded (a /setup must answer while it loads); with ``tasks`` the model is awaited.

    Raises:
        RequestError: a limit is exceeded (nothing was started).
        Unavailable: ``tasks`` given and the model is still loading or failed to load.
    """
    check_labels(targets, options, runtime.config(options.settings).synonyms)
    if tasks is None and (runtime.model is None or runtime.model.state != "ready"):
        return
    if not targets:
        return
    from .runtime import MODEL_WAIT_SECONDS

    units = task_cost(runtime.model.get(MODEL_WAIT_SECONDS), targets, options)
    if tasks is None:
        return
    capacity, images = runtime.worker.capacity, tasks * len(targets)
    if images > capacity:
        raise RequestError("tasks", f"{tasks} tasks ({images} images) are more than the model's queue can ever hold "
                           f"({capacity})", f"send at most {capacity // len(targets)} tasks per request, pre-label the "
                           "project with `seediff prelabel` (README, 'Pre-labelling a whole project'), or raise "
                           "SEEDIFF_QUEUE_SIZE")
    limit = runtime.settings.max_request_cost
    if tasks * units > limit:
        raise RequestError("tasks", f"{tasks} tasks x {units:.1f} units each = {tasks * units:.0f} units, over the "
                           f"limit of {limit:g} units per request ({LIMITS}; one unit is an SD 1.5 UNet forward at "
                           "512 px)", f"send at most {max(1, int(limit // units))} tasks per request (select fewer in "
                           "the Data Manager), pre-label the project with `seediff prelabel` (README, 'Pre-labelling "
                           f"a whole project'), or raise {REQUEST_COST_ENV} (an administrator's setting)")
