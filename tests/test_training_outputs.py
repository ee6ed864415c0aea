"""Training commands without ``--out`` write to the user's data folder, never into the package."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cfqa_core.cli import main
from cfqa_core.userdirs import default_output, user_data_dir

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "cfqa_core" / "weights"


def weights_digest() -> str:
    """One hash over every file of the package's weights folder (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_WEIGHTS.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(PACKAGE_WEIGHTS)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("CFQA_DATA_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CFQA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "xdg" / "cfqa"


def test_user_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("CFQA_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_data_dir() == tmp_path / ".local" / "share" / "cfqa"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert user_data_dir() == tmp_path / "x" / "cfqa"
    monkeypatch.setenv("CFQA_DATA_HOME", str(tmp_path / "c"))
    assert default_output("models", "embedded").parent == tmp_path / "c" / "models"


def test_train_without_out_writes_to_the_user_folder(data_home, capsys):
    pytest.importorskip("torch")
    before = weights_digest()
    assert main(["train", "--steps", "2", "--n-train", "4", "--n-val", "2", "--batch", "2", "--threads", "1",
                 "--warmup", "1"]) == 0
    written = list((data_home / "models").glob("embedded-*"))
    assert len(written) == 1 and (written[0] / "model.safetensors").is_file()
    assert f"model written to {written[0]}" in capsys.readouterr().err
    assert weights_digest() == before


def test_train_codec_without_out_writes_to_the_user_folder(data_home, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("constriction")
    before = weights_digest()
    assert main(["train-codec", "--task", "cls", "--lambdas", "0.5", "--steps", "2", "--batch", "2",
                 "--n-train", "4", "--n-val", "2", "--threads", "1", "--quiet"]) == 0
    written = list((data_home / "codecs").glob("hyperprior-cls-*"))
    assert len(written) == 1 and (written[0] / "codec.json").is_file()
    assert f"codec written to {written[0]}" in capsys.readouterr().err
    assert weights_digest() == before
