"""The slices file of the planted-bias demo: read and validated into a ``DemoSpec``.

The slices file (see ``slices.toml`` next to this module) is data, not code: it lists the
values of four rendering attributes (garment ``tint``, background ``pattern``,
``brightness``, corner ``marker``) with their rendering parameters, and the planted
slices. A slice is a conjunction of conditions (``where``) on the class and the
attributes; in the TRAIN split it may be planted by changing the attribute
probabilities of some classes (``plant``) and/or by flipping the labels of the images it
matches (``flip``). Every problem raises WorkspaceError naming the file and the key.
``train_tables`` gives the train-split attribute probabilities the plants imply.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.demo.fashion import FASHION_CLASSES
from core.errors import WorkspaceError

ATTRIBUTES = ("tint", "pattern", "brightness", "marker")
SLICE_KINDS = ("spurious", "rare", "noisy")
PATTERN_KINDS = ("plain", "stripes", "dots", "checker", "grid", "diagonal")
MARKER_SHAPES = ("none", "square", "cross")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
DEFAULT_SLICES = Path(__file__).resolve().parent / "slices.toml"

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Attribute:
    """One rendering attribute: its value names, train base probabilities and parameters."""

    name: str
    values: tuple[str, ...]
    base_p: tuple[float, ...]
    params: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Plant:
    """In the train split, P(attribute = value | class in labels) is set to probs[value]."""

    labels: tuple[str, ...]
    attribute: str
    probs: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Slice:
    """A planted slice: its test-set definition (``where``) and how it is planted in train."""

    name: str
    kind: str
    description: str
    where: tuple[tuple[str, tuple[str, ...]], ...]
    plants: tuple[Plant, ...] = ()
    flip_to: tuple[str, ...] = ()  # each flipped image takes one of these classes, uniformly
    flip_p: float = 0.0

    @property
    def column(self) -> str:
        """Name of the slice's ground-truth column."""
        return f"slice_{self.name}"

    @property
    def definition(self) -> str:
        """The ``where`` conditions as a cohort filter (DuckDB SQL over the metadata columns),
        e.g. ``"label" = 'Shirt' AND "tint" IN ('red', 'blue')``: it can be pasted into Cohorts."""

        def text(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        return " AND ".join(
            f'"{k}" IN ({", ".join(map(text, v))})' if len(v) > 1 else f'"{k}" = {text(v[0])}' for k, v in self.where
        )


@dataclass(frozen=True)
class DemoSpec:
    """A validated slices file."""

    path: Path
    sha256: str
    size: int
    background: tuple[int, int, int]
    attributes: tuple[Attribute, ...]
    slices: tuple[Slice, ...]
    classes: tuple[str, ...] = tuple(FASHION_CLASSES)

    @classmethod
    def from_toml(cls, path: Path | str) -> DemoSpec:
        """Read and validate a slices file; raise WorkspaceError naming the problem."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise WorkspaceError(f"Cannot read the slices file {path}: {exc.strerror}.") from exc
        return cls.from_bytes(raw, path)

    @classmethod
    def from_bytes(cls, raw: bytes, path: Path | str = "<slices>") -> DemoSpec:
        """Validate the content of a slices file; ``path`` only names it in messages."""
        path = Path(path)
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise WorkspaceError(f"Slices file {path} is not valid TOML: {exc}") from exc
        try:
            return _parse(doc, path, hashlib.sha256(raw).hexdigest())
        except WorkspaceError as exc:
            raise WorkspaceError(f"Slices file {path}: {exc}") from None

    def attribute(self, name: str) -> Attribute:
        """The attribute called ``name``."""
        return next(a for a in self.attributes if a.name == name)

    def unplanted(self) -> DemoSpec:
        """The same spec with every plant and label flip removed (the clean control)."""
        clean = tuple(replace(s, plants=(), flip_to=(), flip_p=0.0) for s in self.slices)
        return replace(self, slices=clean)


# ---------------------------------------------------------------------------- parsing


def _check_keys(table: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise WorkspaceError(
            f"unknown key '{unknown[0]}' in {what} (allowed: {', '.join(sorted(allowed))})."
        )


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WorkspaceError(f"{what} must be a table.")
    return value


def _probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise WorkspaceError(f"{what} must be a probability between 0 and 1, got {value!r}.")
    return float(value)


def _rgb(value: Any, what: str) -> tuple[int, int, int]:
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    )
    if not ok:
        raise WorkspaceError(f"{what} must be three integers 0-255, got {value!r}.")
    return (value[0], value[1], value[2])


def _names(value: Any, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A name or a non-empty list of names, each one of ``known``."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise WorkspaceError(f"{what} must be a name or a list of names, got {value!r}.")
    for n in names:
        if n not in known:
            raise WorkspaceError(f"unknown value '{n}' in {what} (known: {', '.join(known)}).")
    return tuple(dict.fromkeys(names))


def _value_params(attr: str, value: str, params: dict[str, Any], size: int) -> dict[str, Any]:
    """Validate and complete the rendering parameters of one attribute value."""
    what = f"attributes.{attr}.{value}"
    if attr == "tint":
        _check_keys(params, {"rgb", "p"}, what)
        if "rgb" not in params:
            raise WorkspaceError(f"{what} needs an rgb colour.")
        return {"rgb": _rgb(params["rgb"], f"{what}.rgb")}
    if attr == "pattern":
        _check_keys(params, {"kind", "rgb", "period", "p"}, what)
        kind = params.get("kind", "plain")
        if kind not in PATTERN_KINDS:
            raise WorkspaceError(
                f"{what}.kind must be one of {', '.join(PATTERN_KINDS)}, got {kind!r}."
            )
        period = params.get("period", 4)
        if not isinstance(period, int) or isinstance(period, bool) or not 2 <= period <= size // 2:
            raise WorkspaceError(f"{what}.period must be an integer from 2 to {size // 2}.")
        return {
            "kind": kind,
            "rgb": _rgb(params.get("rgb", [110, 110, 110]), f"{what}.rgb"),
            "period": period,
        }
    if attr == "brightness":
        _check_keys(params, {"gain", "p"}, what)
        gain = params.get("gain")
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0.1 <= gain <= 3.0:
            raise WorkspaceError(f"{what}.gain must be a number from 0.1 to 3, got {gain!r}.")
        return {"gain": float(gain)}
    # marker
    _check_keys(params, {"shape", "corner", "rgb", "size", "p"}, what)
    shape = params.get("shape", "none")
    if shape not in MARKER_SHAPES:
        raise WorkspaceError(
            f"{what}.shape must be one of {', '.join(MARKER_SHAPES)}, got {shape!r}."
        )
    if shape == "none":
        return {"shape": "none"}
    corner = params.get("corner", "top-left")
    if corner not in CORNERS:
        raise WorkspaceError(f"{what}.corner must be one of {', '.join(CORNERS)}, got {corner!r}.")
    msize = params.get("size", 5)
    if not isinstance(msize, int) or isinstance(msize, bool) or not 2 <= msize <= size // 4:
        raise WorkspaceError(f"{what}.size must be an integer from 2 to {size // 4}.")
    rgb = _rgb(params.get("rgb", [255, 255, 255]), f"{what}.rgb")
    return {"shape": shape, "corner": corner, "size": msize, "rgb": rgb}


def _parse_attribute(name: str, table: Any, size: int) -> Attribute:
    values = _table(table, f"attributes.{name}")
    if not values:
        raise WorkspaceError(f"attributes.{name} has no values.")
    names, given, params = [], {}, []
    for value, spec in values.items():
        spec = _table(spec, f"attributes.{name}.{value}")
        if not _NAME_RE.match(value):
            raise WorkspaceError(
                f"value name '{value}' of attribute '{name}' may use only letters, digits and _."
            )
        names.append(value)
        params.append(_value_params(name, value, spec, size))
        if "p" in spec:
            given[value] = _probability(spec["p"], f"attributes.{name}.{value}.p")
    base = _fill(names, given, {v: 1.0 for v in names}, f"attributes.{name}")
    return Attribute(name, tuple(names), tuple(base), tuple(params))


def _fill(
    names: list[str], given: dict[str, float], rest_weights: dict[str, float], what: str
) -> list[float]:
    """Complete a distribution: ``given`` values keep their probability, the rest of the
    mass goes to the other values in proportion to ``rest_weights`` (uniform if all zero)."""
    total = sum(given.values())
    if total > 1.0 + 1e-9:
        raise WorkspaceError(f"probabilities of {what} add up to {total:g}, more than 1.")
    others = [v for v in names if v not in given]
    if not others:
        if abs(total - 1.0) > 1e-6:
            raise WorkspaceError(
                f"probabilities of {what} give every value but add up to {total:g}, not 1."
            )
        return [given[v] for v in names]
    weights = np.array([rest_weights[v] for v in others], dtype=float)
    weights = (
        weights / weights.sum() if weights.sum() > 0 else np.full(len(others), 1 / len(others))
    )
    rest = dict(zip(others, (1.0 - total) * weights, strict=True))
    return [given.get(v, rest.get(v, 0.0)) for v in names]


def _parse_slice(
    entry: Any, index: int, spec_attrs: dict[str, Attribute], classes: tuple[str, ...]
) -> Slice:
    entry = _table(entry, f"slices[{index}]")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise WorkspaceError(
            f"slices[{index}] needs a name made of letters, digits and _ (got {name!r})."
        )
    what = f"slice '{name}'"
    _check_keys(entry, {"name", "kind", "description", "where", "plant", "flip"}, what)
    kind = entry.get("kind")
    if kind not in SLICE_KINDS:
        raise WorkspaceError(f"{what}: kind must be one of {', '.join(SLICE_KINDS)}, got {kind!r}.")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise WorkspaceError(f"{what}: description must be a string.")

    where_table = _table(entry.get("where"), f"{what}: where")
    if not where_table:
        raise WorkspaceError(f"{what}: where needs at least one condition.")
    where = []
    for key, allowed in where_table.items():
        if key == "label":
            where.append((key, _names(allowed, classes, f"{what}: where.label")))
        elif key in spec_attrs:
            where.append((key, _names(allowed, spec_attrs[key].values, f"{what}: where.{key}")))
        else:
            raise WorkspaceError(
                f"{what}: unknown attribute '{key}' in where (known: label, {', '.join(spec_attrs)})."
            )

    plants_raw = entry.get("plant", [])
    if not isinstance(plants_raw, list):
        raise WorkspaceError(f"{what}: plant must be a list of tables.")
    plants = []
    for j, p in enumerate(plants_raw):
        pwhat = f"{what}: plant[{j}]"
        p = _table(p, pwhat)
        labels = _names(p.get("label", list(classes)), classes, f"{pwhat}.label")
        attrs = [k for k in p if k != "label"]
        if not attrs:
            raise WorkspaceError(f"{pwhat} sets no attribute probabilities.")
        for attr in attrs:
            if attr not in spec_attrs:
                raise WorkspaceError(
                    f"{pwhat}: unknown attribute '{attr}' (known: {', '.join(spec_attrs)})."
                )
            probs = _table(p[attr], f"{pwhat}.{attr}")
            for value, prob in probs.items():
                if value not in spec_attrs[attr].values:
                    raise WorkspaceError(
                        f"{pwhat}: unknown value '{value}' of attribute '{attr}' "
                        f"(known: {', '.join(spec_attrs[attr].values)})."
                    )
                _probability(prob, f"{pwhat}.{attr}.{value}")
            plants.append(Plant(labels, attr, tuple((v, float(q)) for v, q in probs.items())))

    flip_to: tuple[str, ...] = ()
    flip_p = 0.0
    if "flip" in entry:
        flip = _table(entry["flip"], f"{what}: flip")
        _check_keys(flip, {"to", "p"}, f"{what}: flip")
        if "to" not in flip or "p" not in flip:
            raise WorkspaceError(
                f"{what}: flip needs 'to' (a class or a list of classes) and 'p' (a probability)."
            )
        flip_to = _names(flip["to"], classes, f"{what}: flip.to")
        flip_p = _probability(flip["p"], f"{what}: flip.p")
        clash = set(flip_to) & set(dict(where).get("label", ()))
        if clash:
            raise WorkspaceError(
                f"{what}: flip.to names '{sorted(clash)[0]}', one of the classes the slice flips."
            )
    return Slice(name, kind, description, tuple(where), tuple(plants), flip_to, flip_p)


def _parse(doc: dict[str, Any], path: Path, sha: str) -> DemoSpec:
    _check_keys(doc, {"image", "attributes", "slices"}, "the file")
    image = _table(doc.get("image", {}), "[image]")
    _check_keys(image, {"size", "background"}, "[image]")
    size = image.get("size", 32)
    if not isinstance(size, int) or isinstance(size, bool) or not 28 <= size <= 64:
        raise WorkspaceError(f"image.size must be an integer from 28 to 64, got {size!r}.")
    background = _rgb(image.get("background", [30, 30, 30]), "image.background")

    attrs_table = _table(doc.get("attributes"), "[attributes]")
    for name in attrs_table:
        if name not in ATTRIBUTES:
            raise WorkspaceError(f"unknown attribute '{name}' (known: {', '.join(ATTRIBUTES)}).")
    missing = [a for a in ATTRIBUTES if a not in attrs_table]
    if missing:
        raise WorkspaceError(
            f"attribute '{missing[0]}' is missing (every file lists {', '.join(ATTRIBUTES)})."
        )
    attributes = {a: _parse_attribute(a, attrs_table[a], size) for a in ATTRIBUTES}

    classes = tuple(FASHION_CLASSES)
    entries = doc.get("slices", [])
    if not isinstance(entries, list):
        raise WorkspaceError("slices must be an array of tables ([[slices]]).")
    slices = tuple(_parse_slice(e, i, attributes, classes) for i, e in enumerate(entries))
    seen: set[str] = set()
    for s in slices:
        if s.name in seen:
            raise WorkspaceError(f"two slices are named '{s.name}'.")
        seen.add(s.name)
    spec = DemoSpec(path, sha, size, background, tuple(attributes.values()), slices, classes)
    train_tables(spec)  # validates that the plants combine into proper distributions
    return spec


# --------------------------------------------------------------------------- train-split probabilities


def train_tables(spec: DemoSpec) -> dict[str, np.ndarray]:
    """Per attribute, the (n_classes, n_values) probabilities used in the train split.

    Each row starts from the attribute's base probabilities; plants set the listed values
    for their classes and the remaining mass is shared by the other values in proportion
    to their base probabilities. Raises WorkspaceError for conflicting plants.
    """
    tables = {}
    for attr in spec.attributes:
        rows = []
        for cls in spec.classes:
            given: dict[str, float] = {}
            for s in spec.slices:
                for plant in s.plants:
                    if plant.attribute != attr.name or cls not in plant.labels:
                        continue
                    for value, prob in plant.probs:
                        if value in given:
                            raise WorkspaceError(
                                f"P({attr.name}={value} | {cls}) is planted twice (slice '{s.name}')."
                            )
                        given[value] = prob
            base = dict(zip(attr.values, attr.base_p, strict=True))
            rows.append(_fill(list(attr.values), given, base, f"{attr.name} for class '{cls}'"))
        tables[attr.name] = np.array(rows, dtype=float)
    return tables
