"""The schema of ``workspaces.toml``: every key's type, range and allowed values.

Validated with pydantic in strict mode before anything is loaded: a number where a path is
expected, ``arch = 18``, ``hosted = 1`` or a scalar where a list is expected is an error
naming the workspace, the key, what was given and what is expected. Booleans are TOML
booleans, never 1 or "yes"; unknown keys, and keys that do not apply to a model or dataset
kind, are reported. ``check_workspace`` and ``check_settings`` return the problems as
sentences; they never raise for a bad value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from core.errors import ConfigError
from core.registry import DATASET_KINDS, MODEL_KINDS

Text = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=4096)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
EntryPoint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]

PASSPHRASE_RULE = "expected text of 4 to 256 characters, not all spaces"
MAX_BATCH = 65_536  # images per batch a workspace (or `build --batch-size`) may ask for
MAX_WORKERS = 256  # loader processes
SPLITS = {"demo": ("train", "test"), "celeba": ("train", "valid", "test", "all")}
# Keys that only some kinds take (every other key applies to every kind).
MODEL_KIND_KEYS = {
    "arch": ("torchvision",),
    "pretrained": ("torchvision",),
    "entrypoint": ("entrypoint",),
}
DATASET_KIND_KEYS = {
    "root": ("imagefolder", "csv", "celeba"),
    "csv": ("csv",),
    "path_column": ("csv",),
    "label_column": ("csv",),
    "attribute_columns": ("csv",),
    "na_values": ("csv",),
    "missing": ("csv", "celeba"),
    "split": ("demo", "celeba"),
    "target": ("celeba",),
    "slices": ("demo",),
}
REQUIRED_KEYS = {
    ("model", "torchvision"): ("arch",),
    ("model", "torchscript"): ("weights",),
    ("model", "entrypoint"): ("entrypoint",),
    ("dataset", "imagefolder"): ("root",),
    ("dataset", "csv"): ("csv",),
    ("dataset", "celeba"): ("root",),
}


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def _check_kind_keys(self, kind: str, part: str, kind_keys: dict[str, tuple[str, ...]]) -> None:
        for key in sorted(self.model_fields_set):
            if key in kind_keys and kind not in kind_keys[key]:
                takers = " or ".join(f"'{k}'" for k in kind_keys[key])
                raise ConfigError(f"'{key}' does not apply to a '{kind}' {part}, only to {takers}: remove it")
        for key in REQUIRED_KEYS.get((part, kind), ()):
            if key not in self.model_fields_set:
                raise ConfigError(f"a '{kind}' {part} needs '{key}': set it")


class ModelTable(_Table):
    """``model = { ... }``: where the classifier comes from and how to feed it."""

    kind: Literal[MODEL_KINDS]
    arch: Text | None = None
    weights: Text | None = None
    pretrained: bool = False
    entrypoint: EntryPoint | None = None
    num_classes: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    input_size: Annotated[int, Field(ge=8, le=4096)] | None = None
    mean: Annotated[list[Number], Field(min_length=3, max_length=3)] | None = None
    std: Annotated[list[Positive], Field(min_length=3, max_length=3)] | None = None
    embedding_layer: Text | None = None
    layers: Annotated[list[Text], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> ModelTable:
        self._check_kind_keys(self.kind, "model", MODEL_KIND_KEYS)
        if self.pretrained and self.weights:
            raise ConfigError("set either 'weights' (a state_dict file) or 'pretrained = true', not both")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ConfigError("'layers' lists a layer twice: list each layer once")
        return self


class DatasetTable(_Table):
    """``dataset = { ... }``: where the images, labels and attributes come from."""

    kind: Literal[DATASET_KINDS]
    root: Text | None = None
    csv: Text | None = None
    path_column: Text | None = None
    label_column: Text | None = None
    attribute_columns: list[Text] | None = None
    na_values: list[str] | None = None
    missing: Literal["skip", "error"] | None = None
    split: Literal["train", "valid", "test", "all"] | None = None
    target: Text | None = None
    slices: Text | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    classes: Annotated[list[Text], Field(min_length=2)] | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> DatasetTable:
        self._check_kind_keys(self.kind, "dataset", DATASET_KIND_KEYS)
        if self.split is not None and self.split not in SPLITS[self.kind]:
            allowed = ", ".join(f"'{s}'" for s in SPLITS[self.kind])
            raise ConfigError(f"split '{self.split}' is not one of {allowed} for a '{self.kind}' dataset: use one of those")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ConfigError("'classes' lists a class twice: list each class once")
        return self


class WorkspaceTable(_Table):
    """One ``[workspace.NAME]`` table."""

    title: Text | None = None
    description: str = ""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 64
    num_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] = 0
    model: ModelTable
    dataset: DatasetTable


class SettingsTable(_Table):
    """The ``[settings]`` table."""

    hosted: bool = False
    workshop: bool = False
    # Never shown: not in the repr, and a wrong value is reported without the value.
    instructor_passphrase: Annotated[
        str, StringConstraints(strip_whitespace=False, min_length=4, max_length=256, pattern=r"\S")
    ] | None = Field(default=None, repr=False)


SECRET_KEYS = ("instructor_passphrase",)


TOP_LEVEL_KEYS = ("settings", "workspace")
_TABLES: dict[str, type[BaseModel]] = {"model": ModelTable, "dataset": DatasetTable}
_TYPE_NAMES = {
    bool: "a boolean", int: "a whole number", float: "a number", str: "text",
    list: "a list", dict: "a table",
}
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "bool_type": "true or false (a TOML boolean, not 1 or \"true\")",
    "float_type": "a number",
    "list_type": "a list, e.g. [\"a\", \"b\"]",
    "dict_type": "a table, e.g. { kind = \"...\" }",
    "model_type": "a table, e.g. { kind = \"...\" }",
    "model_attributes_type": "a table, e.g. { kind = \"...\" }",
    "finite_number": "a finite number",
    "string_pattern_mismatch": "'package.module:factory'",
    "missing": "",
}


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _given(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


def _sentence(error: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as 'key: expected ..., got ...'."""
    loc = tuple(error["loc"])
    kind = error["type"]
    where = _where(loc)
    ctx = error.get("ctx") or {}
    if loc and loc[0] in SECRET_KEYS and kind != "missing":
        # a secret's value is never echoed, even when it is wrong
        return f"{where}: {PASSPHRASE_RULE} (the value is not shown)"
    if kind == "missing":
        return f"{where}: this key is required"
    if kind == "extra_forbidden":
        parent = _TABLES.get(str(loc[-2]), root) if len(loc) > 1 else root
        known = ", ".join(parent.model_fields)
        return f"{where}: unknown key (known keys: {known})"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return f"{where}: {message}" if where else message
    if kind == "literal_error":
        expected = f"one of {ctx.get('expected')}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        expected = f"a number {sign} {bound}"
    elif kind in ("too_short", "too_long"):
        expected = error["msg"].replace("List should have", "a list with").replace("String should have", "text with")
        expected = expected.split(" after validation")[0]
    else:
        expected = _EXPECTED.get(kind, error["msg"].lower().replace("input should be ", ""))
    return f"{where}: expected {expected}, got {_given(error['input'])}"


def _problems(table: type[BaseModel], value: Any) -> tuple[BaseModel | None, list[str]]:
    try:
        return table.model_validate(value), []
    except ValidationError as exc:
        sentences = []
        for error in exc.errors(include_url=False):
            sentence = _sentence(error, table)
            if sentence not in sentences:
                sentences.append(sentence)
        return None, sentences


def check_workspace(table: Any) -> tuple[WorkspaceTable | None, list[str]]:
    """A validated workspace table, or None and one sentence per problem."""
    if not isinstance(table, dict):
        return None, [f"expected a table, got {_given(table)}"]
    return _problems(WorkspaceTable, table)  # type: ignore[return-value]


def check_settings(table: Any) -> tuple[SettingsTable | None, list[str]]:
    """The validated ``[settings]`` table, or None and one sentence per problem."""
    if not isinstance(table, dict):
        return None, [f"expected a table, got {_given(table)}"]
    return _problems(SettingsTable, table)  # type: ignore[return-value]
