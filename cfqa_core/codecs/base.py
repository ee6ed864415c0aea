"""The codec contract shared by block (HEVC/VVC/AV1) and learned codecs.

A codec turns a feature tensor into a real bitstream and back. Everything
needed to decode travels in ``EncodedFeature.meta`` (JSON-serialisable), so
the bytes counted are exactly the bytes a receiver needs plus that sidecar.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cfqa_core.errors import CodecError
from cfqa_core.registry import Registry


@dataclass
class EncodedFeature:
    """A compressed feature: the bitstream that is sent plus its decode sidecar."""

    codec: str
    rate_point: int
    bitstream: bytes
    meta: dict[str, Any] = field(default_factory=dict)
    encode_s: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the bitstream alone."""
        return len(self.bitstream)

    @property
    def meta_bytes(self) -> int:
        """Bytes of the sidecar metadata as compact JSON (counted separately)."""
        return len(json.dumps(self.meta, separators=(",", ":"), sort_keys=True).encode())

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.meta["shape"]))

    @property
    def bpfp(self) -> float:
        """Bits per feature point: 8 x bitstream bytes / number of feature elements."""
        return 8.0 * self.nbytes / self.num_elements


@dataclass(frozen=True)
class CodecInfo:
    name: str
    family: str
    available: bool
    reason: str | None = None


class FeatureCodec(ABC):
    """Base class of every registered codec.

    ``ladder`` lists the codec's default rate points ordered from the highest
    quality (most bytes) to the lowest; for block codecs a rate point is a QP,
    for learned codecs the index of a trained lambda.
    """

    name: ClassVar[str]  # set by ``register_codec``
    family: ClassVar[str]
    ladder: ClassVar[tuple[int, ...]]
    # Tasks whose features the codec is meant for (None: any); task-specific learned codecs set it.
    tasks: ClassVar[tuple[str, ...] | None] = None

    def availability(self) -> tuple[bool, str | None]:
        """(True, None) when usable here, else (False, one-line reason)."""
        return True, None

    def require_available(self) -> None:
        ok, reason = self.availability()
        if not ok:
            raise CodecError(f"codec '{self.name}' is not available: {reason}")

    @abstractmethod
    def encode(
        self,
        feature: np.ndarray,
        rate_point: int,
        *,
        value_range: tuple[float, float],
        bit_depth: int = 10,
    ) -> EncodedFeature:
        """Compress ``feature`` (float32, any rank) at ``rate_point``."""

    @abstractmethod
    def decode(self, encoded: EncodedFeature) -> np.ndarray:
        """Reconstruct the float32 feature of ``encoded.meta['shape']``."""


CODECS: Registry[Callable[..., FeatureCodec]] = Registry("codec", CodecError)


def register_codec(name: str, **defaults: Any) -> Callable[[Any], Any]:
    """Decorator: register a codec class (or factory) under ``name``, which is set as its ``name``.

    ``defaults`` are keyword arguments bound for this name (see :meth:`Registry.register`).
    """
    return CODECS.register(name, **defaults)


def registered_names(filter: str | None = None) -> list[str]:
    """Sorted codec names, optionally those matching an fnmatch pattern (``"hevc*"``)."""
    return CODECS.names(filter)


def get_codec(name: str, **kwargs: Any) -> FeatureCodec:
    """A new codec registered as ``name``; ``kwargs`` go to its constructor (CodecError if unknown).

    ``get_codec("vvc", preset="slow")``, ``get_codec("hyperprior-cls", backend="onnx")``.
    """
    return CODECS.create(name, **kwargs)
