"""A policy named with its parameters: ``name[:key=value[:key=value...]]``.

One syntax for ``cfqa edge run --policy``, ``cfqa policies eval --policies``
and ``cfqa compare --policies``. Values stay strings; the policy's own
parameter model (:mod:`cfqa_edge.policies.registry`) coerces and checks them.
``fixed-matched`` is the fixed policy at the rate plans' matched rung
(``fixed:matched=true``); the offline evaluation refits that rung on each
calibration half.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cfqa_core.errors import PolicyError

ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"fixed-matched": ("fixed", {"matched": "true"})}


@dataclass(frozen=True)
class PolicySpec:
    label: str                                   # how reports name it (the text as given)
    name: str                                    # the registered policy
    params: dict[str, Any] = field(default_factory=dict)


def parse_spec(text: str) -> PolicySpec:
    """Parse ``name[:key=value...]`` (PolicyError naming what is wrong)."""
    name, *pairs = text.strip().split(":")
    if not name:
        raise PolicyError(f"policy spec '{text}' has no policy name")
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolicyError(f"policy spec '{text}': expected key=value, got '{pair}'")
        if key in params:
            raise PolicyError(f"policy spec '{text}': '{key}' given twice")
        params[key] = value
    if name in ALIASES:
        name, implied = ALIASES[name]
        params = {**implied, **params}
    return PolicySpec(text.strip(), name, params)
