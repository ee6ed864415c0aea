"""Regenerate the Python code of ``proto/cfqa_v1.proto`` (grpcio-tools 1.85.1).

Usage, from the repository root::

    python -m proto.generate            # rewrites proto/cfqa_v1_pb2*.py(i)
    python -m proto.generate --out DIR  # writes DIR/proto/... instead (used by the drift test)

The ``-I`` root is the repository root so that the generated gRPC module
imports ``from proto import cfqa_v1_pb2`` and works as part of the package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES: tuple[str, ...] = ("proto/cfqa_v1.proto",)
GENERATED: tuple[str, ...] = ("proto/cfqa_v1_pb2.py", "proto/cfqa_v1_pb2.pyi", "proto/cfqa_v1_pb2_grpc.py")


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc on every file of ``PROTO_FILES``; return the generated paths under ``out_root``."""
    import grpc_tools
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(ROOT / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
    return [out_root / p for p in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
