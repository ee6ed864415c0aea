"""Exceptions with one-line messages that the CLI prints without a traceback."""
from __future__ import annotations


class CfqaError(Exception):
    """Base class: a user-facing error whose message is one clear line."""


class ModelError(CfqaError):
    """Unknown model name, unreadable or mismatched weights."""


class DataError(CfqaError):
    """Unreadable image, wrong array shape or dtype, missing file."""


class CodecError(CfqaError):
    """Codec unavailable, bad QP, corrupt bitstream, encoder failure."""


class MetricError(CfqaError):
    """Unknown metric, mismatched feature shapes, non-finite values."""


class ScenarioError(CfqaError):
    """Invalid scenario YAML, missing trace, unknown policy."""


class PolicyError(CfqaError):
    """Unknown policy or an invalid policy configuration."""
