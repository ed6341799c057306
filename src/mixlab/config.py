"""Stage configs: frozen dataclasses with a help string on every field, loaded from YAML.

Precedence is dataclass defaults < `--config file.yaml` < command-line flags. The
resolved config (``config_to_dict``) is what each stage's manifest records. Stage configs
are declared with ``option(...)`` so the CLI can build its flags and help from them.
This module is the mechanism only: each stage package declares its configs in its own
torch-free module (``dedup/config.py``, ``tokenize/config.py``, ``mixtures/config.py``,
``proxy_models/config.py``; synth and ingest beside their code), and the stage registry
(``mixlab.stages``) names the YAML section each config reads.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mixlab.errors import ConfigError

if typing.TYPE_CHECKING:  # imported by load_yaml: model shapes (config dataclasses) need no YAML
    import yaml

C = TypeVar("C")

# Top-level settings of a pipeline YAML (beside one section per stage). A file holding any of
# them other than `seed`, or any stage's section, is a pipeline file: a single stage given it
# as `--config` reads its own section (and the global `seed`).
PIPELINE_SETTINGS = (
    "description",
    "seed",
    "inputs",
    "targets",
    "scheduler_address",
    "storage_options",
    "mixture_search",  # one-shot | iterative: mixlab.pipelines.run.MIXTURE_SEARCH
)
# Settings a single stage's flat `--config` file may also hold, without making it a pipeline file.
SHARED_SETTINGS = ("seed", "storage_options")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, its one-line help text, and optional allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, dict):
        # A fresh copy per instance: configs are frozen, but a dict field's content is not.
        template = dict(default)
        return dataclasses.field(default_factory=lambda: dict(template), metadata=meta)
    if isinstance(default, list):
        items = tuple(default)
        return dataclasses.field(default_factory=lambda: items, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_choices(cfg: Any) -> None:
    """Validate every field declared with `choices`; called from each config's __post_init__."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{flag_name(f.name)}: {value!r} is not one of {', '.join(map(str, choices))}")


def flag_name(name: str) -> str:
    """The CLI spelling of a field (`num_perm` -> `--num-perm`), used in error messages."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_mapping(text: str, key: str) -> dict[str, float]:
    """`code=0.5,prose=0.5` -> {"code": 0.5, "prose": 0.5}; the CLI form of a weights flag."""
    return _parse_mapping(text, flag_name(key))


def _parse_mapping(text: str, where: str) -> dict[str, float]:
    """parse_mapping with errors prefixed by `where` as given (a flag, or `file: key`)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected name=value pairs like a=0.5,b=0.5, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} for {name!r} is not a number") from None
    return out


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(text: str | Path, where: str) -> Path:
    """A path from a YAML file with `~` and `${VAR}` / `$VAR` expanded; an unset variable is an error."""
    raw = str(text)
    if "://" in raw:
        return Path(raw)  # a URL is passed through as written
    return Path(_expand_variables(raw, where)).expanduser()


def expand_location(text: str | Path, where: str) -> Path | str:
    """`expand_path` for a setting that may also be a URL (kept a str, `${VAR}` expanded)."""
    raw = str(text)
    if "://" in raw:
        return _expand_variables(raw, where)
    return expand_path(raw, where)


def _expand_variables(raw: str, where: str) -> str:
    for match in _VARIABLE.finditer(raw):
        name = match.group(1).strip("{}")
        if name not in os.environ:
            raise ConfigError(f"{where}: {raw!r} uses ${{{name}}}, which is not set in the environment")
    return os.path.expandvars(raw)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or CLI value to the field's declared type, with an error naming the key."""
    inner, optional = unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if inner is Path:
            return Path(value)
        if origin is tuple:
            (item_tp, *_rest) = typing.get_args(inner) or (str,)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return tuple(coerce(key, v, item_tp) for v in value)
        if origin is dict or inner is dict:
            if isinstance(value, str):
                value = _parse_mapping(value, key)
            if not isinstance(value, Mapping):
                raise ValueError(value)
            _k_tp, v_tp = typing.get_args(inner) or (str, Any)
            return {str(k): (coerce(key, v, v_tp) if v_tp is not Any else v) for k, v in value.items()}
    except ConfigError:
        raise
    except (TypeError, ValueError):
        name = getattr(inner, "__name__", str(inner))
        raise ConfigError(f"{key}: {value!r} is not a valid {name}") from None
    return value


def config_from_dict(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
    """Build `cls` from a mapping, rejecting unknown keys (dashes and underscores both accepted)."""
    return cls(**_coerce_values(cls, values, source, cls.__name__))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)}); fix the file's syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def is_pipeline_file(data: Mapping[str, Any], sections: Iterable[str] = ()) -> bool:
    """True when a YAML mapping is a pipeline (settings and stage sections), not one stage's keys.

    `seed` alone does not count: it is also a key of most stages; nor does `storage_options`,
    which any config file may hold.
    """
    names = set(sections)
    return any((k in PIPELINE_SETTINGS and k not in SHARED_SETTINGS) or k in names for k in data)


def storage_options(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A YAML file's top-level `storage_options:` (fsspec keyword arguments: endpoint_url, key,
    secret, client_kwargs...), with `${VAR}` expanded in string values so secrets can stay in
    the environment. Never recorded in a manifest."""
    raw = data.get("storage_options")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: storage_options: expected a mapping of fsspec options, got {raw!r}")

    def expand(value: Any, where: str) -> Any:
        if isinstance(value, str):
            return _expand_variables(value, where)
        if isinstance(value, Mapping):
            return {str(k): expand(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, where) for v in value]
        return value

    return expand(dict(raw), f"{source}: storage_options")


def load_storage_options(config_file: Path | None) -> dict[str, Any]:
    """The `storage_options:` of a `--config` file (pipeline or single stage); {} without one."""
    return {} if config_file is None else storage_options(load_yaml(Path(config_file)), str(config_file))


def section_values(cls: type, data: Mapping[str, Any], section: str, source: str) -> dict[str, Any]:
    """The coerced values a pipeline file gives stage `section`: its own section, plus the
    pipeline's global `seed` where the config has a `seed` and the section sets none."""
    own = data.get(section)
    if own is None:
        own = {}
    if not isinstance(own, Mapping):
        raise ConfigError(f"{source}: section {section!r} must be a mapping of keys to values")
    values = dict(own)
    fields = {f.name for f in dataclasses.fields(cls)}
    if data.get("seed") is not None and "seed" in fields and "seed" not in map(_key, values):
        values["seed"] = data["seed"]
    return _coerce_values(cls, values, f"{source} [{section}]", section)


def resolve_config(
    cls: type[C],
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
    sections: Iterable[str] = (),
) -> C:
    """Defaults < YAML file < overrides (flags the user actually gave; None means not given).

    The YAML file holds the stage's keys at the top level, or is a pipeline file (see
    `is_pipeline_file`; `sections` names every stage section such a file may hold), from which
    the stage reads its own `section` and the global seed. So the shipped pipeline also
    serves as `--config` for any single stage. `section` is the stage's registry name.
    """
    label = section or cls.__name__
    values: dict[str, Any] = {}
    if config_file is not None:
        data = load_yaml(Path(config_file))
        if section is not None and is_pipeline_file(data, {section, *sections}):
            values = section_values(cls, data, section, str(config_file))
        elif is_pipeline_file(data, sections):
            raise ConfigError(f"{config_file}: a pipeline file; pass section= to read one stage's section")
        else:
            flat = {k: v for k, v in data.items() if k != "storage_options"}  # read by the CLI
            values = _coerce_values(cls, flat, str(config_file), label)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        types_ = field_types(cls)
        unknown = [k for k in given if k not in types_]
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for {label} (valid: {', '.join(types_)})")
        values.update({k: coerce(flag_name(k), v, types_[k]) for k, v in given.items()})
    # One construction from the merged values, so a flag can complete what the YAML started
    # (validation in __post_init__ sees the final combination, not the YAML alone).
    return cls(**values)


def _key(raw_key: Any) -> str:
    return str(raw_key).replace("-", "_")


def _coerce_values(cls: type, values: Mapping[str, Any], source: str, label: str) -> dict[str, Any]:
    """YAML values coerced to the fields' types; paths get `~` and `${VAR}` expanded."""
    types_ = field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        if key not in types_:
            raise ConfigError(
                f"{source}: unknown key {raw_key!r} for {label} (valid keys: {', '.join(valid)})"
            )
        where = f"{source}: {raw_key}"
        if unwrap_optional(types_[key])[0] is Path and isinstance(value, str):
            value = expand_path(value, where)
        out[key] = coerce(where, value, types_[key])
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (Paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def check_weights(weights: Mapping[str, float], key: str, tol: float = 1e-6) -> None:
    """Mixture weights must be non-negative and sum to one."""
    if not weights:
        raise ConfigError(f"{flag_name(key)}: no weights given")
    bad = {k: v for k, v in weights.items() if v < 0}
    if bad:
        raise ConfigError(
            f"{flag_name(key)}: negative weights {bad}; weights must be non-negative and sum to 1"
        )
    total = sum(weights.values())
    if abs(total - 1.0) > tol:
        raise ConfigError(f"{flag_name(key)}: weights sum to {total:.6g}, not 1 ({dict(weights)})")
