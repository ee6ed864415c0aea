"""``cfqa cloud serve``: the gRPC inference server."""
from __future__ import annotations

import argparse
from pathlib import Path

from cfqa_core.argtypes import bounded

_port = bounded(int, 0, 65535, name="port")
_seconds = bounded(float, 0, 86400, name="seconds", low_open=True)
_count = bounded(int, 0, 100_000)


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: gRPC inference server")
    csub = cloud.add_subparsers(dest="cloud_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser(
        "serve", help="serve split inference over gRPC until SIGTERM",
        description="Serve split inference over gRPC. Binds 127.0.0.1 unless --bind says otherwise; "
                    "the bearer token comes from --token-file or $CFQA_TOKEN.")
    s.add_argument("--port", type=_port, default=50051, help="TCP port (0 = any free port; printed)")
    s.add_argument("--bind", "--host", dest="host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 or [::] for every interface)")
    s.add_argument("--model", action="append", default=None,
                   help="model name or path to serve (repeatable; default: embedded)")
    s.add_argument("--token-file", type=Path, default=None,
                   help="file whose first line is the bearer token callers must send (default: $CFQA_TOKEN)")
    s.add_argument("--token", default=None,
                   help="the bearer token itself (visible to every user in `ps`: prefer --token-file)")
    s.add_argument("--allow-plaintext-token", action="store_true",
                   help="accept a token over plaintext on a public address (trusted networks only)")
    s.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain (enables TLS)")
    s.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    s.add_argument("--reflection", action="store_true", help="enable gRPC server reflection (off by default)")
    s.add_argument("--max-queue", "--max-concurrent", dest="max_queue", type=_count, default=16,
                   help="frames admitted at once, queued or computing, before RESOURCE_EXHAUSTED (default 16)")
    s.add_argument("--max-queue-delay", type=_seconds, default=2.0,
                   help="longest a frame waits for a compute slot before RESOURCE_EXHAUSTED (default 2 s)")
    s.add_argument("--compute-slots", type=_count, default=None,
                   help="frames decoding/computing at once (default: max-batch-size x batch-workers)")
    s.add_argument("--max-batch-size", type=_count, default=1,
                   help="frames of the same model, split and task set computed together (default 1: no batching)")
    s.add_argument("--max-batch-delay-ms", type=float, default=2.0,
                   help="longest the first frame of a batch waits for others (default 2 ms)")
    s.add_argument("--batch-workers", type=_count, default=1, help="batches computed at once (default 1)")
    s.add_argument("--max-streams", type=_count, default=128, help="InferStream calls open at once")
    s.add_argument("--max-streams-per-peer", type=_count, default=16, help="InferStream calls per client address")
    s.add_argument("--stream-idle", type=_seconds, default=60.0,
                   help="close a stream after this many seconds without a frame (default 60)")
    s.add_argument("--idempotency-cache", type=_count, default=4096,
                   help="answers kept to repeat for a resent (node_id, frame_id); 0 turns it off (default 4096)")
    s.add_argument("--auth-max-failures", type=_count, default=10,
                   help="failed authentications per client address per minute before it is locked out")
    s.add_argument("--workers", type=_count, default=None, help=argparse.SUPPRESS)  # earlier name; no effect
    s.add_argument("--max-message-mb", type=float, default=16.0, help="largest request/response")
    s.add_argument("--grace", type=_seconds, default=30.0,
                   help="seconds in-flight calls get on SIGTERM; a hard limit (default 30)")
    s.add_argument("--server-id", default="", help="replica name reported in responses (default: random)")
    s.add_argument("--torch-threads", type=_count, default=None, help="torch intra-op threads")
    s.add_argument("--eager", action="store_true",
                   help="run the model eagerly, not through its verified TorchScript traces "
                        "(default: traced where a trace reproduces the eager output; $CFQA_TRACED_FORWARD=0 = --eager)")
    s.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false",
                   help="run dpt's traced part in torch, bit for bit the eager model (default: in ONNX Runtime "
                        "when installed and within 1e-4 m of the eager depth, ~4 %% faster)")
    s.add_argument("--metrics-port", type=_port, default=None, help="serve Prometheus metrics on this port")
    s.add_argument("--metrics-bind", default="127.0.0.1", help="address of the metrics endpoint (default 127.0.0.1)")
    s.add_argument("--access-log", default="-",
                   help="JSON access log: '-' for stderr (default), a file path, or 'off'")
    s.set_defaults(func=_serve)


def _setup_logging(access_log: str) -> None:
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    access = logging.getLogger("cfqa.cloud.access")
    access.propagate = False
    if access_log == "off":
        access.setLevel(logging.WARNING)
        return
    access.setLevel(logging.INFO)
    if access_log == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        from cfqa_core.errors import DataError

        try:
            handler = logging.FileHandler(access_log)
        except OSError as exc:
            raise DataError(f"cannot open access log {access_log}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)


def server_config(args: argparse.Namespace, token: str | None):
    """The :class:`~cfqa_cloud.server.ServerConfig` of parsed ``cfqa cloud serve`` arguments."""
    import dataclasses

    from cfqa_cloud.server import ServerConfig

    config = ServerConfig(
        port=args.port, host=args.host, models=tuple(args.model or ("embedded",)), token=token,
        tls_cert=args.tls_cert, tls_key=args.tls_key, max_queue=args.max_queue,
        max_queue_delay_s=args.max_queue_delay, compute_slots=args.compute_slots or None,
        max_batch_size=max(1, args.max_batch_size), max_batch_delay_s=args.max_batch_delay_ms / 1e3,
        batch_workers=max(1, args.batch_workers), max_streams=args.max_streams,
        max_streams_per_peer=args.max_streams_per_peer, stream_idle_s=args.stream_idle,
        auth_max_failures=max(1, args.auth_max_failures), max_message_mb=args.max_message_mb, grace_s=args.grace,
        server_id=args.server_id, torch_threads=args.torch_threads, reflection=args.reflection,
        metrics_port=args.metrics_port, metrics_host=args.metrics_bind,
        allow_plaintext_token=args.allow_plaintext_token, cache_entries=args.idempotency_cache,
    )
    if args.eager:
        config = dataclasses.replace(config, traced_forward=False)
    if not args.onnxruntime:
        config = dataclasses.replace(config, onnxruntime_forward=False)
    return config


def _serve(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from cfqa_cloud.server import read_token, serve

    _setup_logging(args.access_log)
    log = logging.getLogger("cfqa.cloud")
    if args.token and args.token_file:
        from cfqa_core.errors import DataError

        raise DataError("give the token once: --token or --token-file, not both")
    if args.token:
        log.warning("--token puts the secret on the command line, where every local user can read it with `ps`; "
                    "use --token-file or $CFQA_TOKEN")
        token = args.token
    else:
        token = read_token(args.token_file)
    config = server_config(args, token)

    def ready(running) -> None:
        mode = "tls" if config.tls_cert else "plaintext"
        auth = "token" if config.token else "no token"
        models = ", ".join(running.servicer.engine.model_versions())
        metrics = f", metrics on {config.metrics_host}:{running.metrics_port}" if running.metrics_port else ""
        print(f"cfqa cloud: serving {models} on port {running.port} of {config.host} ({mode}, {auth}{metrics})",
              flush=True)

    rc = serve(config, ready=ready)
    # Leave without joining handler threads that may still sit in native code: the grace period is over.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)
