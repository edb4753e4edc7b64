"""The per-image explainer contract: one call from a model, images and targets to maps or profiles.

Most audit methods learn from a dataset and are scikit-learn estimators (``fit`` stores
what they learned). The per-image explainers do not learn anything: given a model, one
image or a batch, and the classes to explain, they compute maps, profiles or curves, as
Captum's ``attribute(inputs, target, ...)`` does. Their contract:

- ``__init__`` takes keyword-only parameters with defaults and stores each unchanged under
  its own name (validated when ``explain`` runs); ``get_params()`` returns them as a dict,
  the key of a cached result;
- ``explain(model, images, targets, **context)`` is the one public call: ``images`` is one
  image or a batch (each explainer says which), ``targets`` the class or classes to
  explain, and ``context`` the method's own named inputs (reference statistics, a filter
  index, a saliency map...). It validates everything, never changes the model or the
  explainer, and returns a small frozen dataclass, the explainer's ``result_type``.

No Streamlit here: the pages cache results keyed by ``get_params()``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar


class Explainer(ABC):
    """Base class of the per-image explainers (``GradCAM``, ``FilterSaliency``, ...).

    Subclasses declare ``result_type`` (the frozen dataclass ``explain`` returns) and an
    ``__init__`` of keyword-only parameters with defaults, each stored as an attribute of
    the same name.
    """

    result_type: ClassVar[type]

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The names of ``__init__``'s parameters, sorted (as scikit-learn lists them)."""
        signature = inspect.signature(cls.__init__)
        return tuple(sorted(name for name in signature.parameters if name != "self"))

    def get_params(self) -> dict[str, Any]:
        """The parameters as given to ``__init__``: ``type(self)(**self.get_params())`` has the
        same parameters, and the dict keys a cached result."""
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        """``Name(param=value, ...)`` listing the parameters that differ from their defaults."""
        signature = inspect.signature(type(self).__init__)
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if signature.parameters[name].default is inspect.Parameter.empty
            or not _same(value, signature.parameters[name].default)
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    @abstractmethod
    def explain(self, model: Any, images: Any, targets: Any, **context: Any) -> Any:
        """The explanation of ``images`` for ``targets`` under ``model`` (a ``result_type``)."""


def _same(a: Any, b: Any) -> bool:
    """Whether a parameter equals its default (values without one truth value never do)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b
