"""``cfqa codec``: list / encode / decode through cfqa_core.cli.main."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cfqa_core.codecs.av1  # noqa: F401  (registers the block codecs)
import cfqa_core.codecs.hevc  # noqa: F401
import cfqa_core.codecs.reference  # noqa: F401
import cfqa_core.codecs.vvc  # noqa: F401
import cfqa_core.commands
from cfqa_core.cli import main
from cfqa_core.codecs.base import get_codec
from cfqa_core.codecs.synthetic import synthetic_feature
from cfqa_core.packing import PackingParams, dequantize, quantize

CODEC_CMD = "cfqa_core.commands.codec_cmd"


@pytest.fixture(autouse=True)
def codec_commands(monkeypatch):
    # The `codec` group is listed in cfqa_core.commands._MODULES; make sure it is
    # there even when this test runs against an older command list.
    if CODEC_CMD not in cfqa_core.commands._MODULES:
        monkeypatch.setattr(cfqa_core.commands, "_MODULES", cfqa_core.commands._MODULES + (CODEC_CMD,))


@pytest.fixture()
def feature_file(tmp_path):
    x = synthetic_feature((2, 20, 64), seed=9)
    path = tmp_path / "feat.npy"
    np.save(path, x)
    return path, x


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cfqa codec: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_list_json_reports_every_codec(capsys):
    code, out, _ = run(capsys, "codec", "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"hevc", "hevc-x265", "hevc-lossless", "vvc", "av1", "hm", "vtm"} <= set(rows)
    for name, row in rows.items():
        assert set(row) >= {"name", "family", "available"}
        assert row["available"] == get_codec(name).availability()[0]
        assert ("reason" in row) == (not row["available"])
    assert rows["hevc"]["family"] == "hevc" and rows["vtm"]["family"] == "vvc"


def test_list_table(capsys):
    code, out, _ = run(capsys, "codec", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["codec", "family", "usable"]
    assert any(line.split()[0] == "hevc" for line in lines[1:])


def test_encode_decode_round_trip(capsys, tmp_path, feature_file):
    path, x = feature_file
    prefix = tmp_path / "out" / "f"
    code, out, err = run(capsys, "codec", "encode", str(path), "--codec", "hevc", "--qp", "6",
                         "--out", str(prefix))
    assert code == 0, err
    meta = json.loads((tmp_path / "out" / "f.json").read_text())
    data = (tmp_path / "out" / "f.bin").read_bytes()
    assert data[:4] == b"\x00\x00\x00\x01"  # Annex-B start code
    assert meta["codec"] == "hevc" and meta["qp"] == 6 and meta["bit_depth"] == 10
    assert meta["bytes"] == len(data) and meta["bpfp"] == pytest.approx(8 * len(data) / x.size)
    assert (meta["width"], meta["height"]) == (64, 40) and meta["shape"] == [2, 20, 64]
    assert meta["value_range"] == [float(x.min()), float(x.max())]
    assert f"{len(data)} bytes" in out

    dec_path, frame_path = tmp_path / "dec.npy", tmp_path / "frame.raw"
    code, out, err = run(capsys, "codec", "decode", str(prefix), "--out", str(dec_path),
                         "--frame-out", str(frame_path))
    assert code == 0, err
    dec = np.load(dec_path)
    assert dec.shape == x.shape and dec.dtype == np.float32
    frame = np.fromfile(frame_path, dtype="<u2")
    assert frame.size == 40 * 64
    params = PackingParams.from_meta(meta)
    np.testing.assert_array_equal(dequantize(frame.reshape(x.shape), params), dec)
    step = (x.max() - x.min()) / 1023
    assert float(np.mean((dec - x) ** 2)) < (2 * step) ** 2


def test_lossless_cli_with_range_and_bits(capsys, tmp_path, feature_file):
    path, x = feature_file
    prefix = tmp_path / "ll"
    code, _, err = run(capsys, "codec", "encode", str(path), "--codec", "hevc-lossless", "--qp", "0",
                       "--range", "-3", "3", "--bits", "12", "--out", str(prefix))
    assert code == 0, err
    code, _, err = run(capsys, "codec", "decode", str(prefix) + ".json", "--out", str(tmp_path / "d.npy"))
    assert code == 0, err
    params = PackingParams((-3.0, 3.0), bit_depth=12)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), dequantize(quantize(x, params), params))


def test_missing_feature_file(capsys, tmp_path):
    code, _, err = run(capsys, "codec", "encode", str(tmp_path / "nope.npy"), "--qp", "4",
                       "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "not found", "nope.npy")


def test_unreadable_and_bad_features(capsys, tmp_path):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    code, _, err = run(capsys, "codec", "encode", str(junk), "--qp", "4", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "junk.npy")
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((4, 8), dtype=np.int16))
    code, _, err = run(capsys, "codec", "encode", str(ints), "--qp", "4", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "floating-point")


def test_qp_out_of_range_and_unknown_codec(capsys, tmp_path, feature_file):
    path, _ = feature_file
    code, _, err = run(capsys, "codec", "encode", str(path), "--codec", "hevc", "--qp", "70",
                       "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "QP 70 outside 0..51", "hevc")
    code, _, err = run(capsys, "codec", "encode", str(path), "--codec", "nosuch", "--qp", "4",
                       "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "unknown codec 'nosuch'")
    assert not (tmp_path / "x.bin").exists()


def test_corrupt_and_missing_bitstreams(capsys, tmp_path, feature_file):
    path, _ = feature_file
    prefix = tmp_path / "f"
    assert run(capsys, "codec", "encode", str(path), "--qp", "10", "--out", str(prefix))[0] == 0
    bin_path = tmp_path / "f.bin"
    good = bin_path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    bin_path.write_bytes(bytes(damaged))
    code, _, err = run(capsys, "codec", "decode", str(prefix), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "corrupt bitstream")
    bin_path.write_bytes(good[:100])
    code, _, err = run(capsys, "codec", "decode", str(prefix), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "truncated")
    bin_path.unlink()
    code, _, err = run(capsys, "codec", "decode", str(prefix), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "bitstream file not found")
    assert not (tmp_path / "d.npy").exists()


def test_bad_metadata(capsys, tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    (tmp_path / "m.bin").write_bytes(b"\x00\x00\x00\x01")
    code, _, err = run(capsys, "codec", "decode", str(tmp_path / "m"), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "not valid JSON")
    (tmp_path / "m.json").write_text(json.dumps({"shape": [1, 2]}))
    code, _, err = run(capsys, "codec", "decode", str(tmp_path / "m"), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "lacks 'codec'")
    code, _, err = run(capsys, "codec", "decode", str(tmp_path / "none"), "--out", str(tmp_path / "d.npy"))
    assert_one_line_error(code, err, "metadata file not found")


def test_unavailable_codec_says_why(capsys, tmp_path, feature_file, monkeypatch):
    monkeypatch.setenv("CFQA_HM_ENCODER", str(tmp_path / "missing-TAppEncoder"))
    path, _ = feature_file
    code, _, err = run(capsys, "codec", "encode", str(path), "--codec", "hm", "--qp", "4",
                       "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "codec 'hm' is not available", "CFQA_HM_ENCODER")
