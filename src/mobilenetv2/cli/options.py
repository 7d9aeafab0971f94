"""The one mechanism that turns a verb's declaration into its argparse parser (DESIGN example 5).

A verb is a module under `mobilenetv2.cli` with a keyword-only dataclass `Args` (its options)
and `run(args: Args) -> int` (a thin call into the library). From `Args`:

* the first line of the docstring is the verb's one-line help, the rest its description;
* each field is one option: its type gives the parsing (`int`, `float`, `str`, `bool` as a
  flag, `Literal[...]` as choices, `list[str]` as several values, `X | None` as optional), its
  `option(...)` the flags, help, metavar and bounds (`minimum`, checked while parsing, so a bad
  value is a usage error); a field without a default is a required option;
* `shared(name, ...)` takes an option everyone uses (`--weights`, `--json`, `-o/--out`,
  `--threads`, `--batch-size`, `--data`, `--backend`, `--precision`, `--calib`) from `SHARED`,
  declared once with one help text and one validation; a verb adds only its default and a note;
* `config_options(SomeConfig)` adds one option per field of a config dataclass (the `train`
  and `profile` verbs), whose value in `Args` is the dict of fields the user actually gave.

A new verb (`segment`, say) is one module and one line in `cli.VERBS`::

    @dataclass(frozen=True, kw_only=True)
    class Args:
        \"\"\"segment images into classes (the one-line help)

        Per-pixel classes of each image, with the preprocessing stored with the weights.
        \"\"\"

        paths: list[str] = option(positional=True, nargs="+", metavar="IMAGE_OR_DIR",
                                  help="image files or folders")
        weights: str = shared("weights")
        palette: Literal["voc", "cityscapes"] = option("voc", help="colours of the classes")
        min_area: int = option(0, minimum=0, help="drop regions smaller than this (pixels)")
        json: bool = shared("json", False)

    def run(args: Args) -> int:
        from mobilenetv2.segment import segment  # library imports inside run: --help stays light

        ...
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, NoReturn, get_args, get_origin

__all__ = [
    "SHARED",
    "Option",
    "Parser",
    "Verb",
    "add_options",
    "add_verb",
    "args_from_namespace",
    "config_options",
    "option",
    "shared",
]


@dataclasses.dataclass(frozen=True)
class Option:
    """How one `Args` field appears on the command line.

    Attributes:
        help: What the option means; "(default: X)" is appended from the field's default.
        flags: Option strings (default: `--field-name`).
        metavar: Placeholder in the usage line.
        choices: Accepted values (default: the values of a `Literal` type).
        nargs: argparse `nargs` ("+" for several values, "?" for an optional value).
        const: Value of a `nargs="?"` option given without a value.
        minimum: Smallest accepted number; below it is a usage error.
        group: Title of the argument group the option is listed under.
        positional: A positional argument instead of an option.
        default_help: Text of "(default: ...)" where the default value itself says little.
    """

    help: str = ""
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    nargs: str | None = None
    const: Any = None
    minimum: float | None = None
    group: str | None = None
    positional: bool = False
    default_help: str | None = None


_META = "mobilenetv2.cli"  # key of the field metadata


def option(default: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """An `Args` field: `default` (none: a required option) and the `Option` fields."""
    return dataclasses.field(default=default, metadata={_META: Option(**declaration)})


# The options several verbs take, each declared once. A verb picks one with `shared(name)`.
SHARED: dict[str, Option] = {
    "weights": Option(
        help="a pretrained name (see `mobilenetv2 pretrained`), one of our .safetensors files, "
        "or a foreign file (.pth, .h5, .tflite) to convert",
        metavar="NAME|PATH",
    ),
    "json": Option(help="machine-readable JSON on stdout"),
    "out": Option(help="where to write", flags=("-o", "--out"), metavar="PATH"),
    "threads": Option(help="intra-op threads", metavar="N", minimum=0,
                      default_help="0, the library's choice: all usable cores"),
    "batch_size": Option(help="images per batch", metavar="N", minimum=1),
    "data": Option(
        help="a folder of labelled images (one sub-folder per class) or 'digits' (the "
        "bundled handwritten digits)",
        metavar="DIR|digits",
    ),
    # The runtime options (cli.backend.RuntimeArgs): which engine runs the model, how.
    "backend": Option(
        help="runtime", choices=("auto", "native", "torch", "onnxruntime", "openvino",
                                 "litert", "executorch"),
        default_help="auto, the fastest installed for the precision",
    ),
    "precision": Option(help="arithmetic actually used", choices=("fp32", "bf16", "int8")),
    "calib": Option(help="calibration images, a folder or 'digits'", metavar="DIR|digits"),
}


def shared(name: str, default: Any = dataclasses.MISSING, *, note: str = "",
           **changes: Any) -> Any:
    """An `Args` field for the shared option `name`, with this verb's default.

    Args:
        name: Key of `SHARED`.
        default: This verb's default (none: the option is required).
        note: What the option means for this verb, appended to the shared help.
        changes: `Option` fields this verb changes (e.g. an extra flag, a metavar).
    """
    base = SHARED[name]
    helptext = f"{base.help}: {note}" if note else base.help
    return dataclasses.field(
        default=default,
        metadata={_META: dataclasses.replace(base, help=helptext, **changes)},
    )


def config_options(cls: type, *, exclude: Iterable[str] = (), title: str | None = None) -> Any:
    """An `Args` field holding the fields of config dataclass `cls` the user gave (a dict).

    Every field of `cls` becomes `--field-name` with no default of its own (unset stays
    unset, so a recipe or a config file below it keeps its value). A field named like a
    shared option (`data`, `batch_size`, `threads`, `weights`) takes the shared declaration.
    """
    return dataclasses.field(
        default_factory=dict,
        metadata={_META: _ConfigGroup(cls, tuple(exclude), title)},
    )


@dataclasses.dataclass(frozen=True)
class _ConfigGroup:
    cls: type
    exclude: tuple[str, ...]
    title: str | None


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


@dataclasses.dataclass(frozen=True)
class Verb:
    """A registered verb: what `main` needs after parsing."""

    name: str
    args: type
    run: Callable[[Any], int | None]
    parser: Parser


def add_verb(sub: argparse._SubParsersAction, name: str, args: type,
             run: Callable[[Any], int | None]) -> Parser:
    """Register verb `name` with options from dataclass `args` and its `run`."""
    doc = inspect.cleandoc(args.__doc__ or "")
    summary, _, description = doc.partition("\n\n")
    p = sub.add_parser(name, help=_escape(summary), description=_escape(description or summary))
    add_options(p, args)
    p.set_defaults(_verb=Verb(name, args, run, p))
    return p


def add_options(parser: argparse.ArgumentParser, args: type) -> None:
    """Add one argument per field of dataclass `args` (see the module docstring)."""
    hints = typing.get_type_hints(args)
    groups: dict[str, Any] = {}

    def target(title: str | None) -> Any:
        if title is None:
            return parser
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    # Ungrouped options first: a verb's own options before the groups it inherits.
    for f in sorted(dataclasses.fields(args), key=lambda f: _title(f) is not None):
        decl = f.metadata.get(_META, Option())
        if isinstance(decl, _ConfigGroup):
            _add_config_group(target(decl.title or f"{f.name} options ({decl.cls.__name__})"),
                              f.name, decl)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        _add(target(decl.group), f.name, hints[f.name], decl, default, required, verb=True)


def _title(f: dataclasses.Field) -> str | None:
    decl = f.metadata.get(_META)
    return "" if isinstance(decl, _ConfigGroup) else getattr(decl, "group", None)


def args_from_namespace(args: type, ns: argparse.Namespace) -> Any:
    """The `Args` instance of the parsed command line."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(args):
        decl = f.metadata.get(_META)
        if isinstance(decl, _ConfigGroup):
            prefix = f"{f.name}."
            values[f.name] = {
                k[len(prefix):]: tuple(v) if isinstance(v, list) else v
                for k, v in vars(ns).items() if k.startswith(prefix) and v is not None
            }
        else:
            values[f.name] = getattr(ns, f.name)
    return args(**values)


def _add_config_group(group: Any, name: str, decl: _ConfigGroup) -> None:
    hints = typing.get_type_hints(decl.cls)
    docs = _attribute_docs(decl.cls)
    for f in dataclasses.fields(decl.cls):
        if f.name in decl.exclude:
            continue
        base = SHARED.get(f.name, Option(help=docs.get(f.name, "")))
        shown = f.default if f.default is not dataclasses.MISSING else None
        _add(group, f.name, hints[f.name], base, None, False, verb=False,
             dest=f"{name}.{f.name}", shown_default=shown)


def _add(group: Any, name: str, tp: Any, decl: Option, default: Any, required: bool, *,
         verb: bool, dest: str | None = None, shown_default: Any = None) -> None:
    """One argument. In verb `Args` a bool is a flag; in a config group it takes a value
    (`--hflip false`) and every default is None, so only what the user typed overrides."""
    kwargs: dict[str, Any] = {}
    optional = get_origin(tp) in (typing.Union, types.UnionType)
    if optional:
        tp = next(a for a in get_args(tp) if a is not type(None))
    choices = decl.choices
    if get_origin(tp) is Literal:
        choices = choices or get_args(tp)
        tp = type(choices[0])
    nargs = decl.nargs
    if get_origin(tp) in (list, tuple):
        tp = get_args(tp)[0]
        nargs = nargs or "+"
    if tp is bool and verb:
        if required or default is not False:
            raise TypeError(f"flag {name} must default to False")
        required = False
        kwargs.update(action="store_true", default=False)
    else:
        if tp is bool:
            kwargs.update(type=_bool, metavar="BOOL")
        elif tp in (int, float):
            kwargs["type"] = _number(tp, decl.minimum)
        elif tp is not str:
            raise TypeError(f"option {name}: unsupported type {tp!r}")
        if choices is not None:
            kwargs["choices"] = list(choices)
        if decl.metavar is not None:
            kwargs["metavar"] = decl.metavar
        elif dest is not None and choices is None and tp is not bool:
            kwargs["metavar"] = name.upper()  # not the dest, which names the config group
        if nargs is not None:
            kwargs["nargs"] = nargs
        if decl.const is not None:
            kwargs["const"] = decl.const
        kwargs["default"] = default
    shown = shown_default if not verb else default
    kwargs["help"] = _escape(_help(decl, shown, verb))
    if decl.positional:
        group.add_argument(name, **kwargs)
        return
    flags = decl.flags or ("--" + name.replace("_", "-"),)
    group.add_argument(*flags, dest=dest or name, required=required, **kwargs)


def _help(decl: Option, default: Any, verb: bool) -> str:
    text = decl.help
    if decl.default_help is not None:
        return f"{text} (default: {decl.default_help})".strip()
    if verb and (default is None or default is False):
        return text
    if isinstance(default, (list, tuple)):
        default = " ".join(map(str, default))
    return f"{text} (default: {default})".strip()


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(tp: type, minimum: float | None) -> Callable[[str], Any]:
    """Parse an int or a finite float, at least `minimum`: the one validation of numbers."""
    what = "an integer" if tp is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what} >= {minimum:g}, got {text}")
        return value

    parse.__name__ = tp.__name__
    return parse


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
    return {k: v.split(". ")[0].rstrip(".") for k, v in docs.items()}
