"""The one registry mechanism: a config section names the class (or factory) that builds
it as Hydra's ``_target_``, with its hyper-parameters beside it.

Agents (``configs/agent/*.yaml``), supervised benchmarks (``configs/benchmark/*.yaml``; their training protocols are
``configs/protocol/*.yaml``) and
their models (``configs/model/*.yaml``) are all built here, so adding one is its Python file
plus its YAML.  Aggregators are named in the library's own registry (``@register``,
``aggregators.make``), from which :func:`mtrl.launch.register_aggregator_configs` derives
every ``aggregator=<name>`` config.  The section's keys are checked against the target's
signature first: an unknown key, a missing ``_target_`` or a target of the wrong kind is
one :class:`~mtrl.configuration.ConfigError` line naming the valid options.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml
from hydra.utils import get_object

from .configuration import ConfigError

TARGET = "_target_"
#: the Hydra config tree
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def group_option(group: str, name: str) -> dict:
    """``configs/<group>/<name>.yaml`` as a plain mapping, over the configs of the same group
    that its defaults list extends (``- nyuv2`` in ``nyuv2_small.yaml``); overrides of other
    groups (``override /model: ...``) are left out.  For reading a component's section by
    name outside a Hydra run (the speed benchmarks, runs recorded before ``_target_``)."""
    path = CONFIGS / group / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} {name!r}; valid: {', '.join(valid)}")
    own = yaml.safe_load(path.read_text()) or {}
    merged: dict = {}
    for base in own.pop("defaults", []):
        if isinstance(base, str) and base != "_self_":
            _merge(merged, group_option(group, base))
    return _merge(merged, own)


def _merge(into: dict, other: dict) -> dict:
    for k, v in other.items():
        into[k] = _merge(dict(into[k]), v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
    return into


def target_of(section: dict, what: str, base: type | None = None) -> Callable:
    """The class or function ``section[_target_]`` names (a subclass of ``base`` where one
    is given)."""
    path = section.get(TARGET) if isinstance(section, dict) else None
    if not path:
        raise ConfigError(f"{what} config has no {TARGET} (the dotted path of the class that builds it)")
    try:
        obj = get_object(str(path))
    except Exception as exc:   # Hydra wraps every import / attribute error
        raise ConfigError(f"{what}: cannot import {TARGET} {path!r} ({str(exc).splitlines()[0]})") from None
    if base is not None and not (inspect.isclass(obj) and issubclass(obj, base)):
        raise ConfigError(f"{what}: {TARGET} {path!r} is not a {base.__module__}.{base.__name__}")
    return obj


def accepted_options(target: Callable, runtime: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword options ``target`` accepts from a config (``runtime`` arguments left
    out), with their defaults (``inspect.Parameter.empty`` where required)."""
    sig = inspect.signature(target)
    return {p.name: p.default for p in sig.parameters.values()
            if p.name not in ("self", *runtime) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build(section: dict, what: str, /, *args, base: type | None = None, labels: tuple[str, ...] = (),
          catch: tuple[type[Exception], ...] = (TypeError, ValueError), **runtime) -> Any:
    """``target(*args, **options, **runtime)`` for the section's ``_target_``; ``options``
    are its keys less ``_target_`` and the ``labels`` (keys that name the run, such as a
    benchmark's ``name``, and are not arguments).  The target's own ``catch`` errors (a
    bad value) become one ConfigError line."""
    target = target_of(section, what, base)
    options = {k: v for k, v in section.items() if k != TARGET and k not in labels}
    sig = inspect.signature(target)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        positional = [p.name for p in sig.parameters.values() if p.name != "self"][:len(args)]
        valid = accepted_options(target, (*positional, *runtime))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"{what}: unknown option(s) {', '.join(unknown)} for {section[TARGET]}; "
                              f"valid: {', '.join(sorted(valid)) or '(none)'}")
    try:
        return target(*args, **options, **runtime)
    except catch as exc:
        raise ConfigError(f"{what}: {str(exc).splitlines()[0]}") from None
