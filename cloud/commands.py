"""``cfqa cloud serve``: the gRPC inference server."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: gRPC inference server")
    csub = cloud.add_subparsers(dest="cloud_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("serve", help="serve split inference over gRPC until SIGTERM")
    s.add_argument("--port", type=int, default=50051, help="TCP port (0 = any free port; printed)")
    s.add_argument("--host", default="[::]", help="address to bind (default: all)")
    s.add_argument("--model", action="append", default=None,
                   help="model name or path to serve (repeatable; default: embedded)")
    s.add_argument("--token", default=os.environ.get("CFQA_TOKEN"),
                   help="require 'authorization: Bearer TOKEN' (default: $CFQA_TOKEN, else none)")
    s.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain (enables TLS)")
    s.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    s.add_argument("--workers", type=int, default=8, help="RPC handler threads")
    s.add_argument("--max-concurrent", type=int, default=None,
                   help="inference calls in progress before RESOURCE_EXHAUSTED (default: workers)")
    s.add_argument("--compute-slots", type=int, default=1, help="calls decoding/computing at once")
    s.add_argument("--max-message-mb", type=float, default=16.0, help="largest request/response")
    s.add_argument("--grace", type=float, default=30.0, help="seconds in-flight calls get on SIGTERM")
    s.add_argument("--server-id", default="", help="replica name reported in responses")
    s.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from cloud.server import ServerConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = ServerConfig(
        port=args.port, host=args.host, models=tuple(args.model or ("embedded",)), token=args.token or None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, workers=args.workers, max_concurrent=args.max_concurrent,
        compute_slots=args.compute_slots, max_message_mb=args.max_message_mb, grace_s=args.grace,
        server_id=args.server_id, torch_threads=args.torch_threads,
    )

    def ready(running) -> None:
        mode = "tls" if config.tls_cert else "plaintext"
        auth = "token" if config.token else "no token"
        models = ", ".join(running.servicer.engine.model_versions())
        print(f"cfqa cloud: serving {models} on port {running.port} ({mode}, {auth})", flush=True)

    return serve(config, ready=ready)


