"""CLI options built from config dataclass fields (DESIGN example 5)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

__all__ = ["add_config_options", "config_overrides"]


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_options(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    include: typing.Iterable[str] | None = None,
    exclude: typing.Iterable[str] = (),
    prefix: str = "",
) -> list[str]:
    """Add `--field-name` options for the fields of dataclass `cls`; defaults stay unset
    (None) so only what the user typed overrides a config. Returns the field names added."""
    hints = typing.get_type_hints(cls)
    names = []
    doc = _attribute_docs(cls)
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if (include is not None and f.name not in include) or f.name in skip:
            continue
        tp = hints[f.name]
        flag = "--" + prefix + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name, "default": None}
        origin = get_origin(tp)
        if origin is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif tp is bool:
            kwargs.update(type=_bool, metavar="BOOL")
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif origin in (tuple, list):
            inner = get_args(tp)[0]
            kwargs.update(type=inner if inner in (int, float, str) else str, nargs="+")
        elif origin is typing.Union or origin is types.UnionType:
            inner = [a for a in get_args(tp) if a is not type(None)][0]
            kwargs["type"] = inner if inner in (int, float, str) else str
        else:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs["help"] = f"{doc.get(f.name, '')} (default: {default})".strip()
        parser.add_argument(flag, **kwargs)
        names.append(f.name)
    return names


def config_overrides(args: argparse.Namespace, names: typing.Iterable[str],
                     prefix: str = "") -> dict[str, Any]:
    """The fields the user actually gave on the command line."""
    out = {}
    for name in names:
        value = getattr(args, prefix.replace("-", "_") + name, None)
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """First sentence of each field's entry in the class docstring's Attributes section."""
    docs: dict[str, str] = {}
    text = cls.__doc__ or ""
    if "Attributes:" not in text:
        return docs
    current = None
    for line in text.split("Attributes:", 1)[1].splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        head, sep, rest = stripped.partition(":")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(
            " " * 12
        ):
            current = head
            docs[current] = rest.strip()
        elif current:
            docs[current] += " " + stripped
    return {k: v.split(". ")[0].rstrip(".").replace("%", "%%") for k, v in docs.items()}
