"""``cfqa edge run``: send a folder of images to the cloud as compressed features."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cfqa_core.argtypes import bounded
from cfqa_core.task_names import TASKS


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def default_spool_dir(spool_dir: str | None, out: str | None, node_id: str | None) -> Path:
    """The spool folder: the one given, else beside the output file, else in the user's data folder.

    Never a temporary folder: the next run must find what this one left.
    """
    if spool_dir:
        return Path(spool_dir)
    if out:
        out_path = Path(out)
        return out_path.with_name(out_path.name + ".spool")
    import socket

    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (node_id or socket.gethostname()))
    return data / "cfqa" / "edge-spool" / (name or "node")


def register(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("run", help="extract, encode and send a folder of images; one JSON line per frame")
    p.add_argument("--cloud", action="append", required=True, metavar="HOST:PORT",
                   help="cloud replica (repeatable: round-robin over all)")
    p.add_argument("--images", required=True, help="folder of images (sent in name order)")
    p.add_argument("--policy", default="fixed", help="rate-control policy (default: fixed)")
    p.add_argument("--rate-point", "--qp", dest="rate_point", type=int, default=None,
                   help="rate point of the fixed policy (the QP of block codecs)")
    p.add_argument("--policy-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="extra option of the policy (repeatable)")
    p.add_argument("--codec", default="hevc")
    p.add_argument("--bit-depth", type=int, default=10)
    p.add_argument("--task", action="append", choices=TASKS, default=None,
                   help="task (repeatable; default: cls)")
    p.add_argument("--split", type=int, default=None, help="split block K (default: the last block)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="feature backend; auto (default): ONNX Runtime on --onnx-dir or on the model's export "
                        "in the user cache (made once at first use), torch only without ONNX Runtime")
    p.add_argument("--model", default="embedded", help="'embedded' or a model folder")
    p.add_argument("--onnx-dir", default=None, help="folder written by 'cfqa edge export' (onnx backend)")
    p.add_argument("--onnx-provider", action="append", default=None, metavar="NAME",
                   help="ONNX Runtime execution provider, in order of preference (repeatable; default: all "
                        "available, e.g. CUDAExecutionProvider then CPUExecutionProvider)")
    p.add_argument("--threads", type=bounded(int, 1, 1024), default=None, help="threads of the feature backend")
    p.add_argument("--out", default=None,
                   help="JSON-lines output, appended to; a restart resumes from it (default: stdout)")
    p.add_argument("--node-id", default=None)
    p.add_argument("--token", default=os.environ.get("CFQA_TOKEN"), help="bearer token (default: $CFQA_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="PEM CA/certificate to verify the cloud (enables TLS)")
    p.add_argument("--tls-server-name", default=None, help="name the cloud certificate is checked against")
    p.add_argument("--timeout", type=bounded(float, 0.001, 86400), default=10.0, help="deadline of one call, seconds")
    p.add_argument("--senders", type=bounded(int, 1, 256), default=2, help="frames in flight at once")
    p.add_argument("--queue", type=bounded(int, 1, 100_000), default=32,
                   help="waiting frames also held in memory (every frame is on disk in the spool; the rest "
                        "are read back from it)")
    p.add_argument("--spool-dir", default=None,
                   help="write-ahead spool, kept across runs so that a restart resumes (default: OUT.spool "
                        "beside --out, else $XDG_DATA_HOME/cfqa/edge-spool/NODE_ID)")
    p.add_argument("--max-spool-mb", type=bounded(float, 1, 1 << 24), default=1024.0,
                   help="disk budget of the spool; a frame that does not fit is dropped with its reason")
    p.add_argument("--max-age", type=bounded(float, 0.001, 30 * 86400), default=300.0,
                   help="drop a frame the cloud has not taken within this many seconds of capture")
    p.add_argument("--retry-initial", type=bounded(float, 0.001, 3600), default=0.2, help="first backoff, seconds")
    p.add_argument("--retry-max", type=bounded(float, 0.001, 3600), default=5.0, help="backoff cap, seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cfqa_edge.backends import make_backend
    from cfqa_edge.client import RetryPolicy
    from cfqa_edge.runner import EdgeRunner, RunConfig, build_policy, list_images

    images = list_images(args.images)
    options = {"rate_point": args.rate_point, **dict(args.policy_arg)}
    policy = build_policy(args.policy, options)
    backend = make_backend(args.backend, model=args.model, split=args.split, onnx_dir=args.onnx_dir,
                           threads=args.threads, providers=args.onnx_provider)
    config = RunConfig(
        cloud=args.cloud, tasks=tuple(args.task or ("cls",)), codec=args.codec, bit_depth=args.bit_depth,
        token=args.token or None, tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        tls_server_name=args.tls_server_name, timeout_s=args.timeout, senders=args.senders,
        memory_items=args.queue, spool_dir=default_spool_dir(args.spool_dir, args.out, args.node_id),
        max_spool_mb=args.max_spool_mb, max_age_s=args.max_age,
        retry=RetryPolicy(initial_s=args.retry_initial, max_s=max(args.retry_max, args.retry_initial)),
        progress=not args.no_progress,
    )
    if args.node_id:
        config.node_id = args.node_id
    out = Path(args.out) if args.out else None
    runner = EdgeRunner(config, backend, policy)
    if out is None:
        # JSON lines go to stdout as they complete.
        out = Path("/dev/stdout")
    summary = runner.run(images, out)
    print(json.dumps({"summary": summary.to_dict()}), file=sys.stderr)
    return 0 if summary.dropped == 0 else 3
