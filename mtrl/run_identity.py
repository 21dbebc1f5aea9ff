"""A run's identity: which config values make two runs different, the run directory name
derived from them, and the comparison a resumed or skipped run must pass.

A run is its full resolved config.  Its default directory is named by the aggregator,
every identity-relevant value the user typed (``cagrad-c=0.2``), and a short hash of the
whole resolved config (seed and :data:`UNTRACKED` keys left out), so that no two different
configs share a directory even when the typed overrides are equal but a default changed
underneath them.

Two lists per driver say which keys may differ between the config of a run directory and
the config that continues it:

* ``untracked`` keys do not change what a run computes (logging and checkpoint intervals,
  the device string, the data path) or legitimately grow it (``train.steps`` /
  ``train.epochs`` to extend a run; ``env.vector``: the same transitions from
  subprocesses; ``train.nonfinite_skip``: the same update, skipped on the host or the
  device; ``train.compile``: the same update, compiled, equal to float tolerance): they are not in the hash, and may change on resume;
* ``resumable`` keys are part of the identity (a sweep over them gives one directory per
  value) but may change when the user resumes a directory explicitly
  (``hydra.run.dir=...``): the learning rate after a non-finite stop.

Every change is recorded in the run's history (``config.json``, key ``_run``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

#: the config key holding run metadata (overrides, identity hash, segments); never part of the identity
META_KEY = "_run"


@dataclass(frozen=True)
class KeyPolicy:
    """The keys of one driver's config that may differ on resume (see the module docstring)."""
    untracked: frozenset[str]
    resumable: frozenset[str]
    #: config-group choices that already appear in the directory path
    in_path: frozenset[str]

    @property
    def may_change(self) -> frozenset[str]:
        return self.untracked | self.resumable


RL_KEYS = KeyPolicy(
    untracked=frozenset({"device", "env.vector", "train.steps", "train.log_every", "train.diagnostics_every",
                         "train.checkpoint_every", "train.checkpoint_minutes", "train.max_nonfinite",
                         "train.nonfinite_skip", "train.compile"}),
    resumable=frozenset({"agent.lr", "agent.actor_lr", "agent.critic_lr", "agent.alpha_lr"}),
    in_path=frozenset({"env", "agent", "aggregator", "seed", "sweep"}),
)

SUPERVISED_KEYS = KeyPolicy(   # benchmark.root: where runs recorded before 2026-12 kept data.root
    untracked=frozenset({"device", "data.root", "benchmark.root", "benchmark.num_workers", "train.epochs",
                         "train.log_every", "train.diagnostics_every"}),
    resumable=frozenset(),
    in_path=frozenset({"benchmark", "aggregator", "mode", "seed", "sweep"}),
)

#: the drivers' policies by the name the configs' ``${run_name:<driver>,...}`` uses
POLICIES = {"rl": RL_KEYS, "supervised": SUPERVISED_KEYS}

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")
MAX_NAME = 100


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> ``{"a.b": value}`` (lists kept as they are)."""
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def identity(config: dict, policy: KeyPolicy, with_seed: bool = True) -> dict[str, object]:
    """The flattened values that make a run what it is: everything but the run metadata and
    the untracked keys (and the seed unless ``with_seed``)."""
    drop = set(policy.untracked) | ({"seed"} if not with_seed else set())
    return {k: v for k, v in flatten({k: v for k, v in config.items() if k != META_KEY}).items()
            if k not in drop and not any(k.startswith(d + ".") for d in drop)}


def config_hash(config: dict, policy: KeyPolicy) -> str:
    """8 hex digits of the identity without the seed (the seed has its own path level)."""
    text = json.dumps(identity(config, policy, with_seed=False), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _parse_override(text: str) -> tuple[str, str] | None:
    key, sep, value = text.lstrip("+~").partition("=")
    return (key.strip(), value.strip()) if sep else None


def readable_overrides(overrides: list[str], policy: KeyPolicy) -> list[str]:
    """The typed overrides that change the identity and are not already in the path, short:
    ``aggregator.c=0.2`` -> ``c=0.2``, ``experiment=mt10_quick`` -> ``mt10_quick``."""
    items = []
    for text in overrides:
        parsed = _parse_override(text)
        if parsed is None:
            continue
        key, value = parsed
        if key.startswith("hydra") or key in policy.in_path or key in policy.untracked:
            continue
        items.append(value if "." not in key and "/" not in key else f"{key.rsplit('.', 1)[-1]}={value}")
    return sorted(_SAFE.sub("_", i) for i in items)


def run_name(method: str, overrides: list[str], config: dict, policy: KeyPolicy) -> str:
    """``<method>[-<override>...]-<hash>``; the overrides are dropped from the name (they stay in
    ``config.json``) when it would be longer than ``MAX_NAME`` characters."""
    parts = [_SAFE.sub("_", str(method)), *readable_overrides(overrides, policy)]
    name = "-".join(parts)
    if len(name) > MAX_NAME:
        name = parts[0]
    return f"{name}-{config_hash(config, policy)}"


def differences(old: dict, new: dict, policy: KeyPolicy) -> tuple[list[tuple[str, object, object]],
                                                                 list[tuple[str, object, object]]]:
    """(forbidden, allowed) differences ``(key, old, new)`` between a run directory's config and
    the config that would continue it."""
    a = flatten({k: v for k, v in old.items() if k != META_KEY})
    b = flatten({k: v for k, v in new.items() if k != META_KEY})
    forbidden, allowed = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if json.dumps(va, sort_keys=True, default=str) == json.dumps(vb, sort_keys=True, default=str):
            continue
        (allowed if key in policy.may_change else forbidden).append((key, va, vb))
    # values set in both first: they say what changed; keys one side lacks follow from those
    forbidden.sort(key=lambda d: ("<unset>" in (d[1], d[2]), d[0]))
    return forbidden, allowed


def describe(diffs: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)


def check_continuation(old: dict, new: dict, policy: KeyPolicy, where: str) -> list[tuple[str, object, object]]:
    """The allowed differences between ``old`` (the run directory's) and ``new``; a
    ``ValueError`` naming the first differing keys when any other value differs."""
    forbidden, allowed = differences(old, new, policy)
    if forbidden:
        shown = describe(forbidden[:3]) + (f" (and {len(forbidden) - 3} more)" if len(forbidden) > 3 else "")
        raise ValueError(f"{where} holds a run of another config ({shown}); only "
                         f"{', '.join(sorted(policy.may_change))} may change when a run continues: "
                         "use the run's own values or a new run directory")
    return allowed
