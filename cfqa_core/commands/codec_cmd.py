"""``cfqa codec``: list the feature codecs, encode a feature file, decode it back.

``encode`` writes ``PREFIX.bin`` (the raw elementary stream: Annex-B for
HEVC/VVC, an OBU stream for AV1, the entropy-coded string of a learned codec)
and ``PREFIX.json`` (everything needed to decode it, plus bytes and BPFP).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cfqa_core.errors import CfqaError, CodecError, DataError

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("codec", help="feature codecs: list, encode, decode")
    csub = parser.add_subparsers(dest="codec_command", metavar="SUBCOMMAND")
    csub.required = True

    p = csub.add_parser("list", help="every registered codec and whether it is usable here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = csub.add_parser("encode", help="compress a feature .npy into PREFIX.bin + PREFIX.json")
    p.add_argument("feature", help="float feature tensor (.npy)")
    p.add_argument("--codec", default="hevc", help="codec name (see 'cfqa codec list'; default hevc)")
    p.add_argument("--rate-point", "--qp", dest="rate_point", type=int, required=True,
                   help="rate point: the QP of block codecs, the quality index of learned ones")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.bin and PREFIX.json")
    p.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"),
                   help="truncation range (default: the feature's own min and max)")
    p.add_argument("--bits", type=int, default=10, help="bit depth of the packed frame (default 10)")
    p.add_argument("--rounding", choices=("round", "floor"), default=None,
                   help="quantisation rounding of block codecs (default round)")
    p.set_defaults(func=_cmd_encode)

    p = csub.add_parser("decode", help="decompress PREFIX.bin + PREFIX.json into a feature .npy")
    p.add_argument("prefix", help="prefix given to 'encode' (PREFIX.json / PREFIX.bin also accepted)")
    p.add_argument("--out", required=True, help="decoded feature (.npy, float32)")
    p.add_argument("--frame-out", help="also write the decoded frame, cropped, as little-endian uint16")
    p.set_defaults(func=_cmd_decode)


def _codec_infos() -> list[dict[str, Any]]:
    import cfqa_core.codecs  # noqa: F401  (registers the built-in codecs)
    from cfqa_core.codecs.base import get_codec, registered_names

    infos = []
    for name in registered_names():
        row: dict[str, Any] = {"name": name}
        try:
            codec = get_codec(name)
            ok, reason = codec.availability()
            row.update(family=codec.family, available=bool(ok), ladder=list(codec.ladder))
        except (CfqaError, ImportError) as exc:
            ok, reason = False, str(exc)
            row.update(family="unknown", available=False)
        if not ok:
            row["reason"] = reason or "unavailable"
        infos.append(row)
    return infos


def _cmd_list(args: argparse.Namespace) -> int:
    infos = _codec_infos()
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    width = max((len(i["name"]) for i in infos), default=4)
    print(f"{'codec':<{width}}  {'family':<8}  {'usable':<6}  notes")
    for i in infos:
        note = i.get("reason") or "ladder " + " ".join(map(str, i.get("ladder", [])))
        print(f"{i['name']:<{width}}  {i['family']:<8}  {'yes' if i['available'] else 'no':<6}  {note}")
    return 0


def _load_feature(path: str):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"feature file not found: {path}")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty or cut-short file
        raise DataError(f"cannot read {path} as a .npy array: {exc or type(exc).__name__}") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} holds several arrays (.npz); give one .npy feature")
    return arr


def _native(what: str, call: Callable[[], T]) -> T:
    """Run a codec call; any failure inside a native library becomes a one-line CodecError.

    Native decoders report some failures as exceptions outside ``Exception``
    (constriction's ``PanicException`` derives from BaseException).
    """
    try:
        return call()
    except (CfqaError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # noqa: B036 - see the docstring
        raise CodecError(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                         ) from None


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


def _cmd_encode(args: argparse.Namespace) -> int:
    import cfqa_core.codecs  # noqa: F401
    from cfqa_core.codecs.base import get_codec
    from cfqa_core.packing import feature_range, validate_feature

    codec = get_codec(args.codec)
    feature = validate_feature(_load_feature(args.feature), args.feature)
    if args.range is not None:
        value_range: Any = tuple(args.range)
    else:
        value_range = feature_range(feature, "minmax")
    kwargs: dict[str, Any] = {"value_range": value_range, "bit_depth": args.bits}
    if args.rounding is not None:
        kwargs["rounding"] = args.rounding
    encoded = _native(f"{codec.name} encode", lambda: codec.encode(feature, args.rate_point, **kwargs))
    meta = dict(encoded.meta)
    meta.setdefault("codec", encoded.codec)
    meta.setdefault("rate_point", encoded.rate_point)
    meta.setdefault("shape", list(feature.shape))
    meta["bytes"] = encoded.nbytes
    meta["bpfp"] = encoded.bpfp
    meta["encode_s"] = round(encoded.encode_s, 6)
    prefix = Path(args.out)
    bin_path, json_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".json")
    _write(bin_path, encoded.bitstream)
    _write(json_path, (json.dumps(meta, indent=2) + "\n").encode())
    print(f"{encoded.codec} rate point {encoded.rate_point}: {encoded.nbytes} bytes, "
          f"{encoded.bpfp:.4f} bpfp, {encoded.encode_s:.3f} s -> {bin_path}, {json_path}")
    return 0


def _prefix_of(arg: str) -> Path:
    p = Path(arg)
    return p.with_suffix("") if p.suffix in (".json", ".bin") else p


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object")
    for key in ("codec", "shape"):
        if key not in meta:
            raise DataError(f"{path} lacks '{key}'")
    return meta


def _cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    import cfqa_core.codecs  # noqa: F401
    from cfqa_core.codecs.base import EncodedFeature, get_codec
    from cfqa_core.codecs.block import BlockCodec
    from cfqa_core.packing import unpack

    prefix = _prefix_of(args.prefix)
    json_path, bin_path = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".bin")
    meta = _read_meta(json_path)
    if not bin_path.is_file():
        raise DataError(f"bitstream file not found: {bin_path}")
    bitstream = bin_path.read_bytes()
    # A stream cut short (or grown) must fail here, whatever the decoder would make of it.
    try:
        expected = int(meta["bytes"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{json_path} lacks an integer 'bytes' (the bitstream's length)") from None
    if len(bitstream) != expected:
        raise CodecError(f"corrupt bitstream: {bin_path} has {len(bitstream)} bytes, {json_path.name} says "
                         f"{expected} (truncated?)")
    codec = get_codec(str(meta["codec"]))
    try:
        rate_point = int(meta.get("rate_point", meta.get("qp")))
    except (TypeError, ValueError):
        raise DataError(f"{json_path} lacks an integer 'rate_point'") from None
    encoded = EncodedFeature(codec=codec.name, rate_point=rate_point, bitstream=bitstream, meta=meta)
    frame = None
    if isinstance(codec, BlockCodec):
        frame = _native(f"{codec.name} decode", lambda: codec.decode_frame(encoded))
        try:
            feature = unpack(frame, meta)
        except DataError as exc:
            raise CodecError(f"cannot unpack decoded frame: {exc}") from None
    else:
        if args.frame_out:
            raise CodecError(f"--frame-out needs a block codec; '{codec.name}' codes no frame")
        feature = _native(f"{codec.name} decode", lambda: codec.decode(encoded))
    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the .npy file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:  # exactly this name: np.save(path) would add '.npy'
            np.save(fh, feature)
    except OSError as exc:
        raise DataError(f"cannot write {out}: {exc.strerror or exc}") from None
    if args.frame_out and frame is not None:
        cropped = frame[: int(meta["height"]), : int(meta["width"])]
        _write(Path(args.frame_out), np.ascontiguousarray(cropped, dtype="<u2").tobytes())
    print(f"{codec.name} rate point {rate_point}: {len(bitstream)} bytes -> {out} "
          f"{tuple(feature.shape)} float32", file=sys.stdout)
    return 0
