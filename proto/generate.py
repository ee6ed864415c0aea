"""Regenerate the Python code of ``proto/cfqa_v1.proto`` (grpcio-tools 1.85.1).

Usage, from the repository root::

    python -m cfqa_proto.generate            # rewrites proto/cfqa_v1_pb2*.py(i)
    python -m cfqa_proto.generate --out DIR  # writes DIR/proto/... instead (used by the drift test)

protoc runs on a copy of the ``.proto`` staged as ``cfqa_proto/cfqa_v1.proto``
so that the generated gRPC module imports ``from cfqa_proto import cfqa_v1_pb2``:
the folder ``proto/`` installs as the package ``cfqa_proto``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cfqa_proto"  # the installed name of the folder proto/
PROTO_FILES: tuple[str, ...] = ("proto/cfqa_v1.proto",)
GENERATED: tuple[str, ...] = ("proto/cfqa_v1_pb2.py", "proto/cfqa_v1_pb2.pyi", "proto/cfqa_v1_pb2_grpc.py")


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc on every file of ``PROTO_FILES``; return the generated paths under ``out_root``."""
    import grpc_tools
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="cfqa-protoc-") as tmp:
        stage = Path(tmp) / "in"
        built = Path(tmp) / "out"
        (stage / PACKAGE).mkdir(parents=True)
        built.mkdir()
        staged = []
        for rel in PROTO_FILES:
            target = stage / PACKAGE / Path(rel).name
            shutil.copyfile(ROOT / rel, target)
            staged.append(str(target))
        args = ["grpc_tools.protoc", f"-I{stage}", f"-I{well_known}", f"--python_out={built}",
                f"--pyi_out={built}", f"--grpc_python_out={built}", *staged]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
        for rel in GENERATED:
            shutil.copyfile(built / PACKAGE / Path(rel).name, out_root / rel)
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
