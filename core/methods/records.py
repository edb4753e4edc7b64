"""One record per method: what the app, the CLI and the benches need to know about it.

A record names the method (its state-key page and score name), its page, its subset origin,
its estimator with the page's defaults and the per-image target it fits, how a run on a
subset maps back to store rows, its split-half check, the groups a run flags for scoring (in
the page's order), its workshop steps and its page's settings widgets (``Setting``). Navigation
(app.py), state keys (core/ui/keys.py), subset origins (core/services/subsets.py), the score
command (core/services/score.py), the workshop's steps (core/ui/workshop.py), the UI bench
(bench/ui.py) and the method pages' settings widgets are built from the records.
Each method package defines its record in its ``record.py``; ``core.methods`` registers them
in navigation order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Groups = tuple[list[str], list[np.ndarray], list[np.ndarray]]  # names, rankings, members


@dataclass(frozen=True)
class WorkshopStep:
    """One of the workshop's guided steps; ``order`` places it among the others (Overview 0,
    confirming a cohort 3, checking the finding 9)."""

    key: str
    title: str
    hint: str
    page: str
    order: float


@dataclass(frozen=True)
class Setting:
    """One settings widget of a method page, without Streamlit (core/ui/method_page.py's
    ``settings_form`` draws it in a form, ``settings_widgets`` live), so that a test can hold it
    against the estimator.

    ``name`` is a parameter of ``owner``, the estimator or explainer class it sets (None: the
    record's ``estimator``); its default is the owner's (``record.defaults(n).get_params()``,
    or ``owner().get_params()``: no second copy here), unless ``page_only``: a choice the page
    makes around the estimator (Spotlight's representation), whose default and, when
    ``options`` is empty, options the page gives. ``kind`` picks the widget: "int" and
    "float" a number box over [low, high] (``hosted_high`` caps it on a hosted server, and
    ``hosted_note`` adds the cap to the help there), with ``step`` and printf ``format`` when
    given; "choice" a select box over ``options``; "bool" a checkbox. ``widget`` draws it
    another way: "slider" (a number), "radio" (a horizontal radio, a choice), "toggle" (a
    bool). The box may show the parameter in other units: times ``scale`` (100: a share as a
    percentage), and ``none_as`` standing for None (0: "off").
    """

    name: str
    label: str
    kind: Literal["int", "float", "choice", "bool"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    help: str | None = None
    format: str | None = None
    options: tuple[Any, ...] = ()
    hosted_high: float | None = None
    scale: float = 1
    none_as: float | None = None
    page_only: bool = False
    owner: type | None = None
    widget: Literal["", "slider", "radio", "toggle"] = ""
    hosted_note: bool = False

    def high_for(self, hosted: bool) -> float | None:
        """The box's maximum: the hosted cap on a hosted server when there is one."""
        return self.hosted_high if hosted and self.hosted_high is not None else self.high

    def shown(self, value: Any) -> Any:
        """A parameter value as the widget shows it (scaled; None as ``none_as``)."""
        if value is None and self.none_as is not None:
            return self.none_as
        return value * self.scale if self.scale != 1 else value

    def chosen(self, shown: Any) -> Any:
        """The parameter value of what the widget shows (the inverse of ``shown``)."""
        if self.kind == "int":
            value = int(shown)
        elif self.kind == "float":
            value = float(shown)
        else:
            return shown
        if self.none_as is not None and value == self.none_as:
            return None
        return value / self.scale if self.scale != 1 else value


@dataclass(frozen=True)
class MethodRecord:
    """Everything outside a method's package needs to know about it (see the module docstring).

    name: the state-key page ("spotlight", "subgroups"); score_name its name in the score
      command and its figures ("spotlight", "udis"; empty: the name).
    title, page, icon: its navigation entry. origin: the origin of the subsets it saves.
    estimator: the estimator class a run fits; defaults(n) the page's defaults for n images.
    target: the store metadata column it fits against ("loss", "correct").
    on_rows(fitted, rows, n): a run on a subset's rows mapped back to all n store rows.
    held_out(estimator, x, losses, correct, seed, **options): its split-half confirmation.
    groups(fitted, meta): the groups a run flags, in the order its page lists them.
    settings: its page's settings widgets, in the page's order (``Setting``).
    """

    name: str
    title: str
    page: str
    icon: str
    origin: str | None = None
    score_name: str = ""
    estimator: type | None = None
    defaults: Callable[[int], Any] | None = None
    target: str = ""
    on_rows: Callable[[Any, np.ndarray, int], Any] | None = None
    held_out: Callable[..., pd.DataFrame] | None = None
    groups: Callable[[Any, pd.DataFrame], Groups] | None = None
    steps: tuple[WorkshopStep, ...] = ()
    settings: tuple[Setting, ...] = ()

    def settings_named(self, *names: str) -> tuple[Setting, ...]:
        """The settings of these names, in this order (for a page that draws them in several places)."""
        by_name = {s.name: s for s in self.settings}
        return tuple(by_name[name] for name in names)


def setting_defaults(record: MethodRecord, n: int) -> dict[str, Any]:
    """The defaults of ``record``'s settings for ``n`` images (page-only ones left out), each
    from its owner's ``get_params()``, or the record's ``defaults(n)`` where it has no owner."""
    main = record.defaults(n).get_params() if record.defaults is not None else {}
    return {s.name: s.owner().get_params()[s.name] if s.owner is not None else main[s.name]
            for s in record.settings if not s.page_only}


_RECORDS: list[MethodRecord] = []


def register_method(record: MethodRecord) -> None:
    """Add a method's record (after the registered ones: navigation keeps this order)."""
    if any(r.name == record.name for r in _RECORDS):
        raise ValueError(f"A method named {record.name!r} is registered already.")  # programming error: two records, one name
    _RECORDS.append(record)


def unregister_method(name: str) -> None:
    """Remove a record (tests that add a fake method take it out again)."""
    _RECORDS[:] = [r for r in _RECORDS if r.name != name]


def method_records() -> tuple[MethodRecord, ...]:
    """Every registered method, in navigation order."""
    return tuple(_RECORDS)


def method_record(name: str) -> MethodRecord:
    """The record named ``name``; KeyError when there is none."""
    for record in _RECORDS:
        if record.name == name:
            return record
    raise KeyError(name)


def record_for(estimator: Any) -> MethodRecord:
    """The record of the method ``estimator`` belongs to (by its class)."""
    for record in _RECORDS:
        if record.estimator is not None and isinstance(estimator, record.estimator):
            return record
    raise TypeError(f"No method record fits a {type(estimator).__name__}.")  # programming error: runs take recorded estimators


def scored_methods() -> dict[str, MethodRecord]:
    """The methods the score command runs, by score name: those whose record turns a run into groups."""
    return {r.score_name or r.name: r for r in _RECORDS if r.groups is not None and r.defaults is not None}
