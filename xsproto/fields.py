"""Field rules for the protocol's frozen dataclasses, declared once and used four ways.

A field is declared ``name: Annotated[type, Rule, Key("json-key")] = default`` (``Key``
only where the JSON key differs from the attribute). From that one declaration,
``check`` (called in ``__post_init__``) refuses bad values at construction, ``load``
builds an instance from its JSON form, ``dump`` gives that form back and ``schema``
publishes it as JSON Schema, so the code and the published schemas cannot disagree.
Strict on purpose, as records come from untrusted peers: a bool is not an int, a string
is not a number, and unknown keys are refused. Stdlib only: every xsproto process
imports this, and pydantic used to cost each of them 150 ms (seconds in the lab).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")
_SHOW_CHARS = 40


def _show(value: object) -> str:
    """A value for an error message, cut short: it may come from an untrusted peer."""
    shown = repr(value)
    return shown if len(shown) <= _SHOW_CHARS else shown[:_SHOW_CHARS] + "..."


def _join(path: str, key: object) -> str:
    """``path.key``, a long or odd key shown cut short."""
    name = key if isinstance(key, str) and len(key) <= _SHOW_CHARS else _show(key)
    return f"{path}.{name}" if path else name


class FieldError(ValueError):
    """A value its field's rule refuses; ``path`` names the field (dotted in a document)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '(top level)'}: {problem}")
        self.path = path


class Rule(ABC):
    """What one field accepts, as a Python value and in JSON."""

    @abstractmethod
    def problem(self, value: object) -> str | None:
        """Why ``value`` is refused, or None when it is allowed."""

    @abstractmethod
    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        """The JSON Schema of the field's JSON form; nested classes go into ``defs``."""

    def load(self, value: object, path: str) -> object:
        """The Python value of a JSON value, checked; rules whose forms differ convert."""
        problem = self.problem(value)
        if problem is not None:
            raise FieldError(path, problem)
        return value

    def dump(self, value: object) -> object:
        """The JSON value of a Python value."""
        return value


class Key:
    """The field's key in JSON, where it is not the attribute's name."""

    def __init__(self, name: str) -> None:
        self.name = name


class Int(Rule):
    """An int in ``[lo, hi]``."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {_show(value)}"
        if not self.lo <= value <= self.hi:
            return f"{_show(value)} is outside [{self.lo}, {self.hi}]"
        return None

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


class Number(Rule):
    """An int or float in ``(gt, le]``; loaded as a float."""

    def __init__(self, *, gt: float, le: float) -> None:
        self.gt = gt
        self.le = le

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, not {_show(value)}"
        if not self.gt < value <= self.le:
            return f"{_show(value)} is outside ({self.gt}, {self.le}]"
        return None

    def load(self, value: object, path: str) -> object:
        return float(typing.cast(float, super().load(value, path)))

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "number", "exclusiveMinimum": self.gt, "maximum": self.le}


class Text(Rule):
    """A str of ``min_length`` to ``max_length`` characters matching ``pattern`` whole.

    Patterns are written anchored (``^...$``) so that JSON Schema's search means the
    same as the full match used here.
    """

    def __init__(self, *, min_length: int = 0, max_length: int | None = None,
                 pattern: str | None = None) -> None:
        self.min_length = min_length
        self.max_length = max_length
        self.pattern = pattern

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, not {_show(value)}"
        if len(value) < self.min_length:
            return f"shorter than {self.min_length} characters: {_show(value)}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"longer than {self.max_length} characters: {_show(value)}"
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            return f"{_show(value)} does not match {self.pattern}"
        return None

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        out: dict[str, object] = {"type": "string"}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


class Choice(Rule):
    """A member of a string enumeration; its value in JSON."""

    def __init__(self, kind: type[StrEnum]) -> None:
        self.kind = kind

    def problem(self, value: object) -> str | None:
        if isinstance(value, self.kind):
            return None
        return f"{_show(value)} is not one of: {', '.join(self._values())}"

    def load(self, value: object, path: str) -> object:
        if isinstance(value, str) and value in self._values():
            return self.kind(value)
        return super().load(value, path)

    def dump(self, value: object) -> object:
        return typing.cast(StrEnum, value).value

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "string", "enum": self._values()}

    def _values(self) -> list[str]:
        return [member.value for member in self.kind]


class Const(Rule):
    """Exactly ``value``, of its type (so ``True`` is not ``1``)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def problem(self, value: object) -> str | None:
        if type(value) is not type(self.value) or value != self.value:
            return f"must be {self.value!r}, not {_show(value)}"
        return None

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"const": self.value}


class Nullable(Rule):
    """None, or what ``rule`` accepts."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def problem(self, value: object) -> str | None:
        return None if value is None else self.rule.problem(value)

    def load(self, value: object, path: str) -> object:
        return None if value is None else self.rule.load(value, path)

    def dump(self, value: object) -> object:
        return None if value is None else self.rule.dump(value)

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"anyOf": [self.rule.schema(defs), {"type": "null"}]}


class Model(Rule):
    """An instance of another dataclass declared with these rules; an object in JSON."""

    def __init__(self, cls: type[DataclassInstance]) -> None:
        self.cls = cls

    def problem(self, value: object) -> str | None:
        if isinstance(value, self.cls):
            return None
        return f"must be a {self.cls.__name__}, not {_show(value)}"

    def load(self, value: object, path: str) -> object:
        return load(self.cls, value, path)

    def dump(self, value: object) -> object:
        return dump(typing.cast("DataclassInstance", value))

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        name = self.cls.__name__
        if name not in defs:
            defs[name] = _object_schema(self.cls, defs)
        return {"$ref": f"#/$defs/{name}"}


class Table(Rule):
    """A dict from str keys that ``keys`` accepts to values that ``values`` accepts."""

    def __init__(self, values: Rule, *, keys: Text | None = None) -> None:
        self.values = values
        self.keys = keys or Text()

    def problem(self, value: object) -> str | None:
        if not isinstance(value, dict):
            return f"must be a dict, not {_show(value)}"
        for key, item in value.items():
            problem = self.keys.problem(key)
            if problem is not None:
                return f"bad key: {problem}"
            problem = self.values.problem(item)
            if problem is not None:
                return f"{_show(key)}: {problem}"
        return None

    def load(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise FieldError(path, f"must be an object, not {_show(value)}")
        out = {}
        for key, item in value.items():
            problem = self.keys.problem(key)
            if problem is not None:
                raise FieldError(_join(path, key), f"bad key: {problem}")
            out[key] = self.values.load(item, _join(path, key))
        return out

    def dump(self, value: object) -> object:
        items = typing.cast(dict[str, object], value).items()
        return {key: self.values.dump(item) for key, item in items}

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "object", "propertyNames": self.keys.schema(defs),
                "additionalProperties": self.values.schema(defs)}


class Bool(Rule):
    """True or false (never 0 or 1)."""

    def problem(self, value: object) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, not {_show(value)}"

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "boolean"}


class Items(Rule):
    """A tuple of what ``item`` accepts; an array in JSON."""

    def __init__(self, item: Rule) -> None:
        self.item = item

    def problem(self, value: object) -> str | None:
        if not isinstance(value, tuple):
            return f"must be a tuple, not {_show(value)}"
        for index, element in enumerate(value):
            problem = self.item.problem(element)
            if problem is not None:
                return f"[{index}]: {problem}"
        return None

    def load(self, value: object, path: str) -> object:
        if not isinstance(value, list):
            raise FieldError(path, f"must be an array, not {_show(value)}")
        return tuple(self.item.load(element, _join(path, index))
                     for index, element in enumerate(value))

    def dump(self, value: object) -> object:
        return [self.item.dump(element) for element in typing.cast(tuple[object, ...], value)]

    def schema(self, defs: dict[str, object]) -> dict[str, object]:
        return {"type": "array", "items": self.item.schema(defs)}


class _Spec(NamedTuple):
    name: str
    key: str
    rule: Rule
    default: object


def specs(cls: type[DataclassInstance]) -> tuple[_Spec, ...]:
    """Each field's rule and JSON key (in declaration order), read once per class."""
    return _specs_of(cls)


@functools.cache
def _specs_of(cls: type[DataclassInstance]) -> tuple[_Spec, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for field in dataclasses.fields(cls):
        marks = getattr(hints[field.name], "__metadata__", ())
        rules = [m for m in marks if isinstance(m, Rule)]
        if len(rules) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs exactly one Rule")
        keys = [m.name for m in marks if isinstance(m, Key)]
        default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else field.default)
        specs.append(_Spec(field.name, keys[0] if keys else field.name, rules[0], default))
    return tuple(specs)


def check(obj: DataclassInstance) -> None:
    """Refuse an instance any of whose fields breaks its rule (call in __post_init__)."""
    for spec in specs(type(obj)):
        problem = spec.rule.problem(getattr(obj, spec.name))
        if problem is not None:
            raise FieldError(f"{type(obj).__name__}.{spec.name}", problem)


def load(cls: type[D], data: object, path: str = "") -> D:
    """Build ``cls`` from its JSON form; unknown and missing keys are errors.

    Every error is a FieldError naming the dotted ``path`` of the offending value, or of
    the object when the fields are fine one by one but not together.
    """
    if not isinstance(data, dict):
        raise FieldError(path, f"must be an object, not {_show(data)}")
    declared = specs(cls)
    known = {spec.key for spec in declared}
    for key in data:
        if key not in known:
            raise FieldError(_join(path, key), "unknown key")
    values = {}
    for spec in declared:
        if spec.key in data:
            values[spec.name] = spec.rule.load(data[spec.key], _join(path, spec.key))
        elif spec.default is dataclasses.MISSING:
            raise FieldError(_join(path, spec.key), "missing")
    try:
        return cls(**values)
    except ValueError as err:
        raise FieldError(path, str(err)) from None


def dump(obj: DataclassInstance) -> dict[str, object]:
    """The JSON form of an instance (every field, keys as published)."""
    return {spec.key: spec.rule.dump(getattr(obj, spec.name)) for spec in specs(type(obj))}


def schema(cls: type[DataclassInstance]) -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of ``cls``'s JSON form."""
    defs: dict[str, object] = {}
    out = _object_schema(cls, defs)
    if defs:
        out["$defs"] = defs
    return out


def _object_schema(cls: type[DataclassInstance], defs: dict[str, object]) -> dict[str, object]:
    declared = specs(cls)
    properties: dict[str, object] = {}
    for spec in declared:
        properties[spec.key] = prop = spec.rule.schema(defs)
        if spec.default is not dataclasses.MISSING:
            prop["default"] = spec.rule.dump(spec.default)
    out: dict[str, object] = {
        "title": cls.__name__,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    required = [spec.key for spec in declared if spec.default is dataclasses.MISSING]
    if required:
        out["required"] = required
    if cls.__doc__:
        out["description"] = inspect.cleandoc(cls.__doc__)
    return out
