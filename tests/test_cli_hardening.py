"""Hostile input on the command line: one error line and exit 2, never a traceback or a silent success."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

import cfqa_core.codecs  # noqa: F401  (registers the codecs)
from cfqa_core.cli import main
from cfqa_core.codecs import entropy
from cfqa_core.codecs.base import get_codec
from cfqa_core.codecs.synthetic import synthetic_feature
from cfqa_core.commands.codec_cmd import _native
from cfqa_core.errors import CodecError

REPO = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code: int, err: str, command: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"cfqa {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def feature_file(tmp_path) -> Path:
    path = tmp_path / "feat.npy"
    np.save(path, synthetic_feature((1, 20, 64), seed=3))
    return path


def test_zero_byte_feature_file(capsys, tmp_path) -> None:
    empty = tmp_path / "zero-byte.npy"
    empty.write_bytes(b"")
    code, _, err = _run(capsys, "codec", "encode", str(empty), "--qp", "10", "--out", str(tmp_path / "x"))
    _one_line(code, err, "codec", "cannot read", "zero-byte.npy")
    assert not (tmp_path / "x.bin").exists()


def test_truncated_stream_does_not_decode(capsys, tmp_path, feature_file) -> None:
    prefix = tmp_path / "f"
    assert _run(capsys, "codec", "encode", str(feature_file), "--codec", "hevc", "--qp", "10",
                "--out", str(prefix))[0] == 0
    data = (tmp_path / "f.bin").read_bytes()
    (tmp_path / "f.bin").write_bytes(data[: len(data) // 2])
    code, _, err = _run(capsys, "codec", "decode", str(prefix), "--out", str(tmp_path / "g.npy"))
    _one_line(code, err, "codec", "corrupt bitstream", f"{len(data) // 2} bytes", f"says {len(data)}")
    assert not (tmp_path / "g.npy").exists()


def test_decode_out_is_the_exact_path(capsys, tmp_path, feature_file) -> None:
    prefix = tmp_path / "f"
    _run(capsys, "codec", "encode", str(feature_file), "--codec", "hevc", "--qp", "4", "--out", str(prefix))
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, _, err = _run(capsys, "codec", "decode", str(prefix), "--out", str(folder))
    _one_line(code, err, "codec", "is a folder")
    assert not Path(str(folder) + ".npy").exists()
    target = tmp_path / "decoded"  # no suffix: written as named, not as decoded.npy
    code, out, _ = _run(capsys, "codec", "decode", str(prefix), "--out", str(target))
    assert code == 0 and f"-> {target} " in out
    assert target.is_file() and not Path(str(target) + ".npy").exists()
    assert np.load(target).shape == (1, 20, 64)


def test_learned_stream_with_zero_latent_range(capsys, tmp_path, feature_file) -> None:
    codec = get_codec("hyperprior-cls")
    if not codec.availability()[0]:
        pytest.skip(codec.availability()[1])
    prefix = tmp_path / "l"
    x = synthetic_feature((1, 145, 128), seed=1)
    np.save(tmp_path / "l.npy", x)
    assert _run(capsys, "codec", "encode", str(tmp_path / "l.npy"), "--codec", codec.name,
                "--qp", str(codec.ladder[0]), "--out", str(prefix))[0] == 0
    data = (tmp_path / "l.bin").read_bytes()
    z, y, _ = entropy.unpack_strings(data)
    bad = entropy.pack_strings(z, y, 0)  # y_max 0: the range coder would panic
    (tmp_path / "l.bin").write_bytes(bad)
    meta = json.loads((tmp_path / "l.json").read_text())
    meta.update(bytes=len(bad), crc32=zlib.crc32(bad))
    (tmp_path / "l.json").write_text(json.dumps(meta))
    code, _, err = _run(capsys, "codec", "decode", str(prefix), "--out", str(tmp_path / "o.npy"))
    _one_line(code, err, "codec", "corrupt bitstream")


def test_native_panic_becomes_a_codec_error() -> None:
    constriction = pytest.importorskip("constriction")
    dec = constriction.stream.queue.RangeDecoder(np.array([12345, 678], dtype=np.uint32))
    model = constriction.stream.model.QuantizedGaussian  # empty support (0, 0): a Rust panic
    with pytest.raises(CodecError, match="learned decode failed: PanicException"):
        _native("learned decode", lambda: dec.decode(model(0, 0), np.zeros(4), np.ones(4)))


def test_cloud_port_out_of_range(capsys) -> None:
    code, out, err = _run(capsys, "cloud", "serve", "--port", "99999")
    assert code == 2 and out == ""
    assert "--port" in err and "99999" in err and "Traceback" not in err


def _scenario(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "scenarios" / "default.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    shutil.copy(REPO / "scenarios" / "default.yaml", tmp_path / "ok.yaml")
    return path


@pytest.mark.parametrize("field, value, needle", [
    ("nodes__0__arrivals__fps", float("inf"), "finite"),
    ("duration_s", 1e300, "less than or equal to 604800"),
    ("nodes__0__count", 100_000_000, "less than or equal to 100000"),
    ("drain_s", float("nan"), "finite"),
    ("links__lte__delay_ms", 1e12, "less than or equal to 60000"),
    ("seed", -1, "greater than or equal to 0"),
])
def test_scenario_numbers_are_bounded(capsys, tmp_path, field, value, needle) -> None:
    path = _scenario(tmp_path, **{field: value})
    code, _, err = _run(capsys, "scenario", "validate", str(path))
    line = _one_line(code, err, "scenario", needle)
    assert field.split("__")[-1] in line
    # What validation refuses, a run refuses the same way before it starts.
    code, _, err = _run(capsys, "run", str(path), "--out", str(tmp_path / "run"))
    _one_line(code, err, "run", needle)
    assert not (tmp_path / "run").exists()


def test_set_refuses_negative_index(capsys, tmp_path) -> None:
    path = _scenario(tmp_path)
    code, _, err = _run(capsys, "scenario", "validate", str(path), "--set", "nodes.-1.count=2")
    _one_line(code, err, "scenario", "'-1' is not an index of nodes")
    assert _run(capsys, "scenario", "validate", str(path), "--set", "nodes.0.count=2")[0] == 0


@pytest.mark.parametrize("option, value, needle", [
    ("--timeout", "inf", "must be in 0.001..86400, got inf"),
    ("--max-age", "nan", "must be in 0.001..2.592e+06, got nan"),
    ("--senders", "0", "must be in 1..256, got 0"),
    ("--queue", "many", "not an integer: 'many'"),
    ("--max-spool-mb", "-5", "must be in 1..1.67772e+07, got -5"),
])
def test_edge_run_numbers_are_bounded(capsys, tmp_path, option, value, needle) -> None:
    code, out, err = _run(capsys, "edge", "run", "--cloud", "127.0.0.1:1", "--images", str(tmp_path),
                          option, value)
    assert code == 2 and out == ""
    assert f"argument {option}: {needle}" in err.strip().splitlines()[-1] and "Traceback" not in err
