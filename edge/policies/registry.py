"""Policy registry: names -> constructors with validated keyword parameters.

The names live in a :class:`~cfqa_core.registry.Registry` (``REGISTRY``;
``POLICIES`` is its live ``{name: class}``).

Each policy declares its parameters as a pydantic model (``Params``, extra
keys forbidden), so scenario YAML and ``--policy-arg KEY=VALUE`` strings are
checked and coerced the same way; an unknown or ill-typed parameter raises
``PolicyError`` naming it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cfqa_core.errors import PolicyError
from cfqa_core.registry import Registry


class PolicyParams(BaseModel):
    """Base of every policy's parameter model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


REGISTRY: Registry[type] = Registry("policy", PolicyError)
POLICIES: dict[str, type] = REGISTRY.entries  # the live {name: class} of the registry
T = TypeVar("T", bound=type)


def register_policy(name: str) -> Callable[[T], T]:
    """Class decorator: register a policy class (with a ``Params`` model) under ``name``, set as its ``name``."""
    return REGISTRY.register(name)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
    if err.get("type") == "extra_forbidden":
        return f"unknown parameter '{where}'"
    return f"parameter '{where}': {err.get('msg', 'invalid')}"


def parse_params(name: str, params_cls: type[PolicyParams], params: dict[str, Any]) -> PolicyParams:
    """Validate ``params`` for policy ``name`` (PolicyError with the first problem)."""
    try:
        return params_cls(**params)
    except ValidationError as exc:
        known = ", ".join(params_cls.model_fields)
        raise PolicyError(f"policy '{name}': {_first_error(exc)} (known: {known})") from None
    except PolicyError as exc:
        raise PolicyError(f"policy '{name}': {exc}") from None


def get_policy(name: str, **params: Any) -> Any:
    """A new instance of the policy registered as ``name`` (one per node: policies keep state)."""
    cls = REGISTRY.get(name)
    return cls(parse_params(name, cls.Params, params))


def policy_names(filter: str | None = None) -> list[str]:
    """Sorted policy names, optionally those matching an fnmatch pattern (``"cfqa-*"``)."""
    return REGISTRY.names(filter)
