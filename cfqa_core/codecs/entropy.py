"""Entropy coding of hyperprior latents with constriction's range coder — numpy only.

Two strings per frame, as CompressAI:

* ``z`` (hyper-latent): symbols ``round(z - median)`` per channel, clamped into
  the support of that channel's tabulated PMF (the factorised prior's discrete
  distribution, computed once at export and shipped as a table), coded with
  constriction's ``Categorical`` model;
* ``y`` (latent): symbols ``round(y - mean)`` coded with a zero-mean quantised
  Gaussian whose standard deviation is the predicted scale rounded up to a
  fixed, log-spaced scale table. constriction evaluates that Gaussian in
  deterministic fixed-point arithmetic, so encoder and decoder agree exactly
  whenever they compute the same table index.

The container is ``varint(len(z)) varint(max |y symbol|) z y`` where each
string is the coder's 32-bit words as big-endian bytes with trailing zero
bytes dropped (the decoder pads them back).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import CodecError

SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
MAX_Y_SYMBOL = 1 << 20  # anything larger is a corrupt header, not a latent


def scale_table(lo: float = SCALE_MIN, hi: float = SCALE_MAX, levels: int = SCALE_LEVELS) -> np.ndarray:
    """The fixed log-spaced scale table (CompressAI's default: 0.11 .. 256, 64 levels)."""
    return np.exp(np.linspace(np.log(lo), np.log(hi), levels))


def scale_indexes(scales: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the smallest table scale >= each scale (lower-bounded by the table's first entry)."""
    return np.searchsorted(table[:-1], np.asarray(scales, dtype=np.float64), side="left").astype(np.int32)


@dataclass
class FactorizedTable:
    """The discrete prior of z: per channel a median, the smallest symbol and a PMF."""

    medians: np.ndarray  # (C,) float32
    offsets: np.ndarray  # (C,) int32, smallest symbol of round(z - median)
    lengths: np.ndarray  # (C,) int32, support size
    pmfs: np.ndarray  # (C, L) float64, zero-padded past each length

    def __post_init__(self) -> None:
        c = len(self.medians)
        if not (self.offsets.shape == self.lengths.shape == (c,) and self.pmfs.ndim == 2 and len(self.pmfs) == c):
            raise CodecError("factorised prior table has inconsistent shapes")
        if np.any(self.lengths < 2) or np.any(self.lengths > self.pmfs.shape[1]):
            raise CodecError("factorised prior table has invalid support lengths")
        if not np.all(np.isfinite(self.pmfs)) or np.any(self.pmfs < 0):
            raise CodecError("factorised prior table has invalid probabilities")

    @property
    def channels(self) -> int:
        return len(self.medians)


# ---- byte helpers ---------------------------------------------------------------------


def words_to_bytes(words: np.ndarray) -> bytes:
    """Big-endian bytes of the coder's words, trailing zero bytes dropped (they carry nothing)."""
    return np.asarray(words, dtype=">u4").tobytes().rstrip(b"\0")


def bytes_to_words(data: bytes) -> np.ndarray:
    pad = (-len(data)) % 4
    return np.frombuffer(data + b"\0" * pad, dtype=">u4").astype(np.uint32)


def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise CodecError("corrupt bitstream: header ends inside a length field")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise CodecError("corrupt bitstream: over-long length field in the header")


def pack_strings(z: bytes, y: bytes, y_max: int) -> bytes:
    """The frame's bitstream: tiny header, then the z string and the y string."""
    return write_varint(len(z)) + write_varint(y_max) + z + y


def unpack_strings(data: bytes) -> tuple[bytes, bytes, int]:
    """Inverse of :func:`pack_strings` (CodecError on a malformed header)."""
    z_len, pos = read_varint(data, 0)
    y_max, pos = read_varint(data, pos)
    if z_len > len(data) - pos:
        raise CodecError(f"corrupt bitstream: z string of {z_len} bytes but only {len(data) - pos} follow")
    if not 1 <= y_max <= MAX_Y_SYMBOL:
        # The encoder writes y_max >= 1; a zero range makes the coder's Gaussian degenerate.
        raise CodecError(f"corrupt bitstream: implausible latent range {y_max}")
    return data[pos : pos + z_len], data[pos + z_len :], y_max


def symbols_crc(symbols: np.ndarray) -> int:
    """CRC-32 of decoded symbols: tells a decoder that desynchronised from the encoder."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes())


# ---- coding ---------------------------------------------------------------------------


def native_failure(exc: BaseException, what: str) -> CodecError:
    """The CodecError for a failure inside the native coder (re-raises interpreter exits).

    constriction reports a Rust panic as ``pyo3_runtime.PanicException``, which
    derives from BaseException: an ``except Exception`` would let it escape and
    leave a server call unanswered.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    return CodecError(f"corrupt bitstream: {what} cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})")


MISSING_CONSTRICTION = "install cfqa-edgecloud[learned] (the 'constriction' range coder is missing)"


def _constriction():
    """constriction, imported on first use: it is the optional ``[learned]`` extra."""
    try:
        import constriction
    except ImportError as exc:
        raise CodecError(f"learned codecs unavailable: {MISSING_CONSTRICTION}") from exc
    return constriction


def _channel_index(shape: tuple[int, ...]) -> np.ndarray:
    """Channel of every element of a (1, C, H, W) latent, flattened in C order."""
    _, c, h, w = shape
    return np.repeat(np.arange(c), h * w)


def z_symbols(z: np.ndarray, table: FactorizedTable) -> tuple[np.ndarray, np.ndarray]:
    """(symbols into each channel's PMF, z_hat) for a (1, C, h, w) hyper-latent."""
    if z.ndim != 4 or z.shape[1] != table.channels:
        raise CodecError(f"hyper-latent of shape {z.shape} does not match a {table.channels}-channel prior")
    med = table.medians.reshape(1, -1, 1, 1)
    q = np.rint(z - med)
    lo = table.offsets.reshape(1, -1, 1, 1)
    hi = lo + table.lengths.reshape(1, -1, 1, 1) - 1
    q = np.clip(q, lo, hi)
    z_hat = (q + med).astype(np.float32)
    return (q - lo).astype(np.int32).ravel(), z_hat


def encode_z(z: np.ndarray, table: FactorizedTable) -> tuple[bytes, np.ndarray]:
    """Range-code a (1, C, h, w) hyper-latent; returns (bytes, z_hat)."""
    c = _constriction()
    symbols, z_hat = z_symbols(z, table)
    probs = table.pmfs[_channel_index(z.shape)]
    enc = c.stream.queue.RangeEncoder()
    enc.encode(symbols, c.stream.model.Categorical(perfect=False), probs)
    return words_to_bytes(enc.get_compressed()), z_hat


def decode_z(data: bytes, shape: tuple[int, ...], table: FactorizedTable) -> np.ndarray:
    """z_hat (float32, ``shape``) from its string."""
    c = _constriction()
    if len(shape) != 4 or shape[1] != table.channels:
        raise CodecError(f"hyper-latent shape {shape} does not match a {table.channels}-channel prior")
    probs = table.pmfs[_channel_index(shape)]
    try:
        dec = c.stream.queue.RangeDecoder(bytes_to_words(data))
        symbols = np.asarray(dec.decode(c.stream.model.Categorical(perfect=False), probs), dtype=np.int64)
    except BaseException as exc:  # constriction signals bad data with assorted types, even a panic
        raise native_failure(exc, "z string") from None
    lengths = table.lengths[_channel_index(shape)]
    if np.any(symbols < 0) or np.any(symbols >= lengths):
        raise CodecError("corrupt bitstream: z symbol outside its prior's support")
    q = symbols.reshape(shape) + table.offsets.reshape(1, -1, 1, 1)
    return (q + table.medians.reshape(1, -1, 1, 1)).astype(np.float32)


def y_symbols(y: np.ndarray, means: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(integer symbols round(y - mean), y_hat = symbols + mean) as CompressAI quantises."""
    if means is None:
        q = np.rint(y)
        return q.astype(np.int32), q.astype(np.float32)
    q = np.rint(y - means)
    return q.astype(np.int32), (q + means).astype(np.float32)


def encode_y(
    y: np.ndarray, scales: np.ndarray, means: np.ndarray | None, table: np.ndarray
) -> tuple[bytes, int, np.ndarray, np.ndarray]:
    """Range-code a latent given its scales (and means); returns (bytes, y_max, y_hat, symbols)."""
    c = _constriction()
    symbols, y_hat = y_symbols(y, means)
    flat = symbols.ravel()
    y_max = max(1, int(np.abs(flat).max(initial=0)))
    if y_max > MAX_Y_SYMBOL:
        raise CodecError(f"latent symbol {y_max} out of the coder's range (non-finite input?)")
    stds = table[scale_indexes(scales, table)].ravel()
    enc = c.stream.queue.RangeEncoder()
    enc.encode(flat, c.stream.model.QuantizedGaussian(-y_max, y_max), np.zeros_like(stds), stds)
    return words_to_bytes(enc.get_compressed()), y_max, y_hat, flat


def decode_y(
    data: bytes, y_max: int, scales: np.ndarray, means: np.ndarray | None, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(y_hat, symbols) from the y string and the decoder's own scales (and means)."""
    c = _constriction()
    stds = table[scale_indexes(scales, table)].ravel()
    try:
        dec = c.stream.queue.RangeDecoder(bytes_to_words(data))
        flat = np.asarray(
            dec.decode(c.stream.model.QuantizedGaussian(-y_max, y_max), np.zeros_like(stds), stds), dtype=np.int32
        )
    except BaseException as exc:
        raise native_failure(exc, "y string") from None
    q = flat.reshape(scales.shape).astype(np.float32)
    y_hat = q if means is None else (q + means).astype(np.float32)
    return y_hat, flat
