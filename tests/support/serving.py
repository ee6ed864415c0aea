"""For tests and benchmarks of the edge-cloud path: a model to serve, real frames, certificates.

TEST DATA ONLY: the random model serves transport tests, never accuracy figures.

``test_model_spec()`` names the model to test with: ``$CFQA_TEST_MODEL``
(default ``embedded``); when that is ``embedded`` and its weights are absent,
a DINOv2 of the embedded architecture with seeded random weights is saved
once under the cache folder and its path returned (transport tests check
bytes and codes, not accuracy).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import tempfile
from pathlib import Path

import numpy as np

RANDOM_MODEL_NAME = "embedded-random"


def _cache_root() -> Path:
    root = Path(os.environ.get("CFQA_CACHE_DIR", Path(tempfile.gettempdir()) / "cfqa-cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def random_model(seed: int = 0):
    """A SplitModel of the embedded architecture with random weights and all three heads."""
    import torch

    from cfqa_core.data.scenes import render_scene
    from cfqa_core.models import ModelMeta, SplitModel, build_backbone
    from cfqa_core.packing import feature_range
    from cfqa_core.tasks import make_views

    torch.manual_seed(seed)
    backbone = build_backbone("embedded")
    names = ("background", *(f"class{i}" for i in range(1, 11)))
    meta = ModelMeta(name=RANDOM_MODEL_NAME, config=backbone.cfg, cls_classes=10, seg_classes=11,
                     class_names=names, version=f"random-{seed}")
    model = SplitModel(backbone, meta).eval()
    images = [render_scene(s).image for s in range(2)]
    with torch.inference_mode():
        pixels = torch.from_numpy(np.concatenate([make_views("seg", im, model.image_size) for im in images]))
        feats = model.backbone.forward_until(pixels, model.depth).numpy()
    lo, hi = feature_range(feats)
    margin = 0.1 * (hi - lo)
    meta.feature_ranges = {t: (lo - margin, hi + margin) for t in ("cls", "seg", "dpt")}
    return model


def test_model_spec() -> str:
    """The model name or path tests and benchmarks load (see the module docstring)."""
    spec = os.environ.get("CFQA_TEST_MODEL", "embedded")
    if spec != "embedded":
        return spec
    from cfqa_core.models import EMBEDDED_DIR, save_model

    if (EMBEDDED_DIR / "model.safetensors").is_file():
        return "embedded"
    folder = _cache_root() / RANDOM_MODEL_NAME
    if not (folder / "model.safetensors").is_file():
        tmp = Path(tempfile.mkdtemp(dir=_cache_root()))
        save_model(random_model(), tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process got there first
            pass
    return str(folder)


test_model_spec.__test__ = False  # not a pytest test despite its name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene_images(n: int, start: int = 0) -> list[np.ndarray]:
    """``n`` rendered synthetic scenes (H x W x 3 uint8)."""
    from cfqa_core.data.scenes import render_scene

    return [render_scene(start + i).image for i in range(n)]


def encoded_frames(model, n: int, *, start: int, rate_point: int, splits=(4, 6)) -> dict[int, list[dict]]:
    """Per split, ``n`` scenes' cls+seg+dpt features HEVC-coded as an edge sends them: ``{split: [{task: enc}]}``."""
    import cfqa_core.codecs as codecs
    from cfqa_core.task_names import TASKS
    from cfqa_edge.backends import TorchBackend

    codec = codecs.get_codec("hevc")
    out: dict[int, list[dict]] = {}
    for split in splits:
        backend = TorchBackend(model, split)
        out[split] = [{t: codec.encode(f, rate_point, value_range=backend.value_range(t))
                       for t, f in backend.features(image, TASKS).items()}
                      for image in scene_images(n, start=start)]
    return out


def write_images(folder: str | Path, n: int, start: int = 0) -> list[Path]:
    """Save ``n`` scenes as PNG files ``frame_0000.png`` ... into ``folder``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(scene_images(n, start)):
        path = folder / f"frame_{start + i:04d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def self_signed_cert(folder: str | Path, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``host``, localhost and 127.0.0.1; returns (cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ServerProcess:
    """``cfqa cloud serve`` in a child process on 127.0.0.1 (tests, benchmarks, local demos).

    ``with ServerProcess(["--model", spec]) as srv: ... srv.port ...``; the
    server's log goes to ``srv.log_path``.
    """

    def __init__(self, args: list[str], port: int = 0, python: str | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 180.0) -> None:
        import sys

        self.args = args
        self.requested_port = port
        self.python = python or sys.executable
        self.env = env
        self.ready_timeout = ready_timeout
        self.port = 0
        self.proc = None
        self.log_path = Path(tempfile.mkstemp(prefix="cfqa-cloud-", suffix=".log")[1])

    def start(self) -> ServerProcess:
        import re
        import subprocess
        import threading

        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(self.env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
        cmd = [self.python, "-m", "cfqa_core.cli", "cloud", "serve", "--host", "127.0.0.1",
               "--port", str(self.requested_port), *self.args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        found: list[int] = []

        def read() -> None:
            for line in self.proc.stdout:
                m = re.search(r"serving .* on port (\d+)", line)
                if m:
                    found.append(int(m.group(1)))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self.ready_timeout)
        if not found:
            self.kill()
            raise RuntimeError(f"cloud server did not start: {self.log_path.read_text()[-2000:]}")
        self.port = found[0]
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self) -> None:
        """Send SIGTERM (graceful stop)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate()
        try:
            self.wait(30)
        except Exception:
            self.kill()
        self._log.close()
