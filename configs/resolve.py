"""The one config resolver of every entry point: defaults < preset < ``--config`` YAML < flags.

A run is configured by *sections*: pydantic models (ours) and dataclasses (TRL's ``SFTConfig`` /
``GRPOConfig``). Their fields share one flat namespace of option names (a nested pydantic model,
like the nanoLlama ``train:`` block, is a nested mapping in YAML and flattened on the command
line). Every field gets a flag spelt as in YAML (``--max_steps``; ``--max-steps`` also works); a
boolean takes ``--flag``, ``--flag true|false`` or ``--no-flag``; ``none`` gives None where None
is allowed. Values are validated against the field's type (pydantic), so a list where a number
belongs is an error, not a traceback later. Every error is one line naming where the value came
from (the file or the flag), the key and what was expected; unknown keys are errors with a
suggestion. ``record`` writes the resolved config in the same shape, so a run's ``config.yaml``
can be passed back as ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

Check = Callable[[Any], str | None]  # a value -> None, or what is wrong with it


class ConfigError(ValueError):
    """A config value, file or flag is wrong; the message is one line that says where and why."""


# -------------------------------------------------------------------------------------------- fields


@dataclasses.dataclass(frozen=True)
class Option:
    """One configurable field: its name, where it lives (section, nested path), type, default and help."""

    name: str
    section: int
    path: tuple[str, ...]  # keys from the section's root, e.g. ("train", "lr")
    annotation: Any
    default: Any
    help: str
    required: bool

    def check(self, value: Any) -> Any:
        """``value`` validated (and converted, e.g. "3" -> 3) against the field's type."""
        return _adapter(self.annotation).validate_python(value)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def options(sections: Sequence[type]) -> dict[str, Option]:
    """Every field of ``sections`` by its option name; two sections naming one option is a bug."""
    found: dict[str, Option] = {}

    def add(option: Option) -> None:
        if option.name in found:
            raise TypeError(
                f"option {option.name!r} is defined twice (sections {found[option.name].section}, {option.section})"
            )
        found[option.name] = option

    def walk(model: type[BaseModel], section: int, prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            if _is_model(field.annotation):
                walk(field.annotation, section, (*prefix, name))
                continue
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            add(
                Option(
                    name,
                    section,
                    (*prefix, name),
                    annotation,
                    default,
                    field.description or "",
                    field.is_required(),
                )
            )

    for i, section in enumerate(sections):
        if _is_model(section):
            walk(section, i, ())
        elif dataclasses.is_dataclass(section):
            hints = typing.get_type_hints(section)
            for f in dataclasses.fields(section):
                if not f.init or f.name.startswith("_"):
                    continue
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                else:
                    default = None
                required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                add(Option(f.name, i, (f.name,), hints[f.name], default, str(f.metadata.get("help", "")), required))
        else:
            raise TypeError(f"a config section must be a pydantic model or a dataclass, not {section!r}")
    return found


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(annotation: Any) -> TypeAdapter:
    key = repr(annotation)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(annotation)
    return _ADAPTERS[key]


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _allows_none(annotation: Any) -> bool:
    return annotation is Any or type(None) in _members(annotation)


def _is_bool(annotation: Any) -> bool:
    return {m for m in _members(annotation) if m is not type(None)} == {bool}


def _is_list(annotation: Any) -> bool:
    return any(get_origin(m) in (list, tuple, set) or m in (list, tuple) for m in _members(annotation))


def _admits_scalar(annotation: Any) -> bool:
    return any(
        get_origin(m) not in (list, tuple, set) and m not in (list, tuple, type(None)) for m in _members(annotation)
    )


def _is_mapping(annotation: Any) -> bool:
    return any(get_origin(m) is dict or m is dict for m in _members(annotation))


def describe_type(annotation: Any) -> str:
    """A short reader's name for a field type (``int``, ``one of a|b``, ``list of int``...)."""
    names = []
    for member in _members(annotation):
        if member is type(None):
            names.append("none")
        elif get_origin(member) is Literal:
            names.append("one of " + "|".join(map(str, get_args(member))))
        elif get_origin(member) in (list, tuple, set):
            inner = get_args(member)
            names.append("list" + (f" of {describe_type(inner[0])}" if inner else ""))
        elif get_origin(member) is dict or member is dict:
            names.append("mapping")
        else:
            names.append(getattr(member, "__name__", str(member)))
    return " or ".join(names)


# -------------------------------------------------------------------------------------------- parser


def usage_error(prog: str, message: str) -> NoReturn:
    """Exit with status 2 and a two-line usage (TRL's full usage is ~140 lines before the line that matters)."""
    sys.stderr.write(
        f"usage: {prog} [--config FILE.yaml] [--OPTION VALUE ...]  (--help lists every option)\n{prog}: error: {message}\n"
    )
    sys.exit(2)


class ConfigParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are ``usage_error``'s two lines."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


_NOT_GIVEN = argparse.SUPPRESS
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _bool_text(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flags(parser: argparse.ArgumentParser, found: Mapping[str, Option], *, skip: set[str] = frozenset()) -> None:
    """One flag per option: ``--name`` (and a hidden ``--kebab-name``), defaulting to 'not given'."""
    for name, option in found.items():
        if name in skip:
            continue
        kebab = "--" + name.replace("_", "-")
        spellings = [f"--{name}"] + ([kebab] if kebab != f"--{name}" else [])
        shown = option.default if not option.required else "required"
        help_text = f"{option.help} (default: {shown})".replace("%", "%%") if option.help else f"(default: {shown})"
        if _is_bool(option.annotation):
            parser.add_argument(
                *spellings,
                dest=name,
                nargs="?",
                const=True,
                type=_bool_text,
                default=_NOT_GIVEN,
                metavar="BOOL",
                help=help_text,
            )
            parser.add_argument(
                f"--no-{name}",
                f"--no_{name}",
                dest=name,
                action="store_const",
                const=False,
                default=_NOT_GIVEN,
                help=argparse.SUPPRESS,
            )
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": _NOT_GIVEN, "help": help_text, "metavar": name.upper()}
        literals = [m for m in _members(option.annotation) if get_origin(m) is Literal]
        if len(literals) == len(_members(option.annotation)) == 1:
            kwargs["metavar"] = "{" + ",".join(map(str, get_args(literals[0]))) + "}"
        if _is_list(option.annotation):
            kwargs["nargs"] = "+"
        parser.add_argument(*spellings, **kwargs)


def _from_flag(option: Option, raw: Any) -> Any:
    """A flag's text(s) as the value to validate: 'none' -> None, JSON for mappings, one item of a list flag."""
    if isinstance(raw, list):
        if len(raw) == 1 and _admits_scalar(option.annotation):
            raw = raw[0]
        else:
            return [_from_flag_text(option, item) for item in raw]
    return _from_flag_text(option, raw)


def _from_flag_text(option: Option, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if raw.strip().lower() in ("none", "null") and _allows_none(option.annotation):
        return None
    if _is_mapping(option.annotation) and raw.lstrip().startswith("{"):
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ConfigError(f"--{option.name}: not a JSON object ({err})") from err
    return raw


# -------------------------------------------------------------------------------------------- files


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing, unreadable or malformed file is a one-line ``ConfigError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a valid YAML file (not UTF-8 text: {err.reason})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not a valid YAML file{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value, not a {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def _flatten(data: Mapping[str, Any], found: Mapping[str, Option], source: str) -> dict[str, tuple[Any, str]]:
    """A YAML mapping as {option: (value, source)}; nested sections are walked, unknown keys rejected."""
    nested_roots = {option.path[0] for option in found.values() if len(option.path) > 1}
    flat: dict[str, tuple[Any, str]] = {}

    def walk(mapping: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in mapping.items():
            path = (*prefix, str(key))
            if not prefix and key in nested_roots:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {key}: expected a mapping of options, got a {_kind(value)}")
                walk(value, path)
                continue
            option = found.get(str(key))
            if option is None or option.path != path:
                raise ConfigError(f"{source}: unknown option {'.'.join(path)!r}{_suggest(str(key), found)}")
            flat[option.name] = (value, source)

    walk(data, ())
    return flat


def _suggest(key: str, found: Mapping[str, Option]) -> str:
    close = difflib.get_close_matches(key, list(found), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -------------------------------------------------------------------------------------------- resolve


def resolve(
    sections: Sequence[type],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    preset: str | Path | None = None,
    checks: Mapping[str, Check] | None = None,
    skip: set[str] = frozenset(),
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[Any, ...]:
    """Parse ``argv`` into one instance per section: field defaults < ``defaults`` < ``preset`` < ``--config`` < flags.

    ``checks`` adds per-option rules to the types (e.g. positive counts of a TRL field); ``skip``
    leaves options out of the command line (YAML only). A usage error exits with a two-line usage.
    ``extra_flags`` may add flags that are not options (e.g. ``--preset``, read by the caller beforehand).
    """
    found = options(sections)
    parser = ConfigParser(
        prog=prog,
        usage="%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file of options (as named below); flags override it"
    )
    if extra_flags is not None:
        extra_flags(parser)
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # "-1e-3" is a value, not a flag
    add_flags(parser, found, skip=skip)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if k in found or k == "config"}
    try:
        values = _merge(found, args, defaults or {}, preset, checks or {})
        built = build(sections, found, values)
    except ConfigError as err:
        parser.error(str(err))
    return built


def peek(argv: Sequence[str] | None, names: Sequence[str]) -> dict[str, Any]:
    """The raw values of ``names`` given by flags or the ``--config`` file (flags win), unchecked and possibly
    partial: for a first progress line printed before the modules that define the options are imported (a
    trainer's TRL config). ``resolve`` validates them afterwards.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    given: dict[str, Any] = {}
    config: str | None = None
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        if key == "config":
            config = value
        elif key in names:
            given[key] = value
    if config:
        try:
            from_file = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            from_file = None
        if isinstance(from_file, dict):
            given = {k: from_file[k] for k in names if k in from_file} | given
    return given


def _merge(
    found: Mapping[str, Option],
    args: dict[str, Any],
    defaults: Mapping[str, Any],
    preset: str | Path | None,
    checks: Mapping[str, Check],
) -> dict[str, Any]:
    layers: list[dict[str, tuple[Any, str]]] = [_flatten(defaults, found, "defaults")]
    if preset is not None:
        layers.append(_flatten(load_yaml(preset), found, str(preset)))
    if args.get("config"):
        layers.append(_flatten(load_yaml(args["config"]), found, str(args["config"])))
    flags = {k: (_from_flag(found[k], v), f"--{k}") for k, v in args.items() if k in found}
    layers.append(flags)
    merged: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        merged.update(layer)
    values: dict[str, Any] = {}
    for name, (value, source) in merged.items():
        option = found[name]
        try:
            values[name] = option.check(value)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            if err.errors()[0]["type"] in _TYPE_ERRORS:
                problem = f"expected {describe_type(option.annotation)} ({problem})"
            raise ConfigError(f"{_where(source, name)}: {problem}, got {value!r}") from None
        problem = checks[name](values[name]) if name in checks else None
        if problem:
            raise ConfigError(f"{_where(source, name)}: {problem}, got {values[name]!r}")
    return values


# pydantic error types that mean "wrong kind of value" (as opposed to a broken constraint such as ge=1)
_TYPE_ERRORS = {
    "int_parsing",
    "int_type",
    "float_parsing",
    "float_type",
    "bool_parsing",
    "bool_type",
    "string_type",
    "list_type",
    "dict_type",
    "literal_error",
    "enum",
    "union_tag_invalid",
    "model_type",
    "int_from_float",
}


def _where(source: str, name: str) -> str:
    return source if source.startswith("--") else f"{source}: {name}"


def build(sections: Sequence[type], found: Mapping[str, Option], values: Mapping[str, Any]) -> tuple[Any, ...]:
    """One instance per section from validated ``values`` (missing ones take the field defaults)."""
    built = []
    for i, section in enumerate(sections):
        mine = {name: v for name, v in values.items() if found[name].section == i}
        try:
            if _is_model(section):
                tree: dict[str, Any] = {}
                for name, value in mine.items():
                    node = tree
                    for key in found[name].path[:-1]:
                        node = node.setdefault(key, {})
                    node[found[name].path[-1]] = value
                built.append(section.model_validate(tree))
            else:
                built.append(section(**mine))
        except ValidationError as err:  # a model's own cross-field rules
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"])) or section.__name__
            raise ConfigError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
        except (ValueError, TypeError) as err:  # a dataclass's __post_init__ (TRL's own checks)
            raise ConfigError(f"{section.__name__}: {err}") from None
    return tuple(built)


# -------------------------------------------------------------------------------------------- record


def as_mapping(*instances: Any) -> dict[str, Any]:
    """The options of ``instances`` in ``--config`` shape: flat, nested models as mappings, plain YAML values."""
    data: dict[str, Any] = {}
    for instance in instances:
        if isinstance(instance, BaseModel):
            data.update(instance.model_dump(mode="json"))
        elif hasattr(instance, "to_dict"):  # transformers' TrainingArguments: enums as values, tokens redacted
            fields = {f.name for f in dataclasses.fields(instance) if f.init and not f.name.startswith("_")}
            data.update({k: v for k, v in instance.to_dict().items() if k in fields})
        else:
            data.update(dataclasses.asdict(instance))
    return _without_passwords(json.loads(json.dumps(data, default=str)))


def _without_passwords(value: Any) -> Any:
    """Config values as they may be stored: a database URL keeps no password (it comes from PG* / .pgpass)."""
    from configs.cli import redact

    if isinstance(value, str):
        return redact(value, mask=None)
    if isinstance(value, dict):
        return {k: _without_passwords(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_passwords(v) for v in value]
    return value


def claim_output(out: str | Path, cfg: Any, what: str) -> Path:
    """Create ``out`` for ``cfg``'s outputs and write its ``config.yaml``, unless ``out`` holds anything that
    is not an earlier output of the same kind (a ``config.yaml`` whose keys are all ``type(cfg)``'s fields): a
    user's file or folder is never written into (``ValueError``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            recorded = load_yaml(out / "config.yaml")
        except ConfigError:
            recorded = {}
        if not recorded or set(recorded) - set(type(cfg).model_fields):
            raise ValueError(
                f"--out {out} holds files and is not a {what} output folder (no config.yaml of one); pass a new or "
                "empty folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return record(out / "config.yaml", cfg)


def record(path: str | Path, *instances: Any) -> Path:
    """Write the resolved config of a run to ``path`` (YAML); it can be passed back as ``--config``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(as_mapping(*instances), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be positive"


def resolve_preset(
    sections: Sequence[type], argv: Sequence[str] | None, *, prog: str, description: str | None, folder: str
) -> tuple[Any, ...]:
    """``resolve`` for a command with presets: ``--preset NAME`` (default ``cpu``) picks ``configs/<folder>/NAME.yaml``
    as the file under ``--config`` (which replaces it), and sets the sections' ``preset`` option to NAME.
    """
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default="cpu")
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    preset = None
    if known.config is None:
        preset = Path(__file__).resolve().parent / folder / f"{known.preset}.yaml"
        if not preset.is_file():
            names = ", ".join(sorted(p.stem for p in preset.parent.glob("*.yaml")))
            usage_error(prog, f"no preset {known.preset!r}; known: {names}")

    def preset_flag(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--preset", default=argparse.SUPPRESS, help=f"preset from configs/{folder}/ (default: cpu)")

    return resolve(
        sections,
        argv,
        prog=prog,
        description=description,
        defaults={"preset": known.preset} if preset is not None else {},
        preset=preset,
        skip={"preset", "seed"},
        extra_flags=preset_flag,
    )
