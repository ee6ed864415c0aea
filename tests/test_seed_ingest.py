"""Ingest of the reference dataset layout and ``cfqa bench --from-seed``, on a tiny generated copy.

The fixture follows the reference README's tree (org_feat/<task>, compressed_feat/<codec>/<task>/<rate>)
with the reference feature layouts (cls (1, 1, T, D), seg (2, 1, T, D), dpt (2, 4, T, D)), tiny T and D.
HM labels come as the reference evaluation log (name, value, mse, cosine, cka per line, the metrics
written by this test's own transcription of the reference loops); the hyperprior's as labels.csv;
VTM uses the flat <name>_<rate>.npy naming with its log inside the task folder.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

import cfqa_core.commands
from cfqa_core.benchmark.protocol import run_protocol
from cfqa_core.benchmark.seed_ingest import ingest_seed, order_rates
from cfqa_core.cli import main
from cfqa_core.errors import DataError
from cfqa_core.metrics import compute_metric

BENCH_CMD = "cfqa_core.commands.bench_cmd"
T, D = 9, 12
SHAPES = {"cls": (1, 1, T, D), "seg": (2, 1, T, D), "dpt": (2, 4, T, D)}
NAMES = {"cls": ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000010"],
         "seg": ["2007_000033", "2007_000042"],
         "dpt": ["bathroom_rgb_00045", "kitchen_rgb_00112"]}
QPS = (2, 4, 6, 8)
LAMBDAS = ("0.0005", "0.002", "0.001")  # folder order on disk is not the quality order
METRICS = ["mse", "cosine", "cka", "cka_seed"]


@pytest.fixture(autouse=True)
def bench_command(monkeypatch):
    if BENCH_CMD not in cfqa_core.commands._MODULES:
        monkeypatch.setattr(cfqa_core.commands, "_MODULES", cfqa_core.commands._MODULES + (BENCH_CMD,))


def ref_metrics(f, g):
    """MSE, token cosine and CKA as the reference evaluation scripts compute them (float32, loops)."""
    mse = np.mean(np.square(f - g))
    n_, c_ = f.shape[:2]
    cos_total, cka_total = 0.0, 0.0
    for n in range(n_):
        for c in range(c_):
            x, y = f[n, c], g[n, c]
            xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
            yn = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-8)
            cos_total += np.mean(np.sum(xn * yn, axis=1))
            xc, yc = x - x.mean(axis=0, keepdims=True), y - y.mean(axis=0, keepdims=True)
            cka_total = np.linalg.norm(xc @ yc.T, "fro") ** 2 / (
                np.linalg.norm(xc @ xc.T, "fro") * np.linalg.norm(yc @ yc.T, "fro") + 1e-8)
    return mse, cos_total / n_ / c_, cka_total / n_ / c_


def gt_value(task, sigma, rng):
    if task == "cls":
        return float(1 + int(round(6 * sigma + rng.uniform(0, 1.5))))
    if task == "seg":
        return 0.7 - sigma * 0.4 + rng.normal(0, 0.02)
    return 0.45 + sigma * 0.3 + rng.normal(0, 0.02)


def make_seed_layout(root, seed=0):
    rng = np.random.default_rng(seed)
    originals = {}
    for task, names in NAMES.items():
        (root / "org_feat" / task).mkdir(parents=True)
        for name in names:
            f = (rng.standard_t(4, SHAPES[task]) * rng.uniform(0.5, 3, D)).astype(np.float32)
            np.save(root / "org_feat" / task / f"{name}.npy", f)
            originals[(task, name)] = f

    def noisy(f, sigma):
        return (f + rng.normal(0, sigma, f.shape)).astype(np.float32)

    # HM: QP folders, labels in the reference log format (QP-major, as its scripts loop).
    for task, names in NAMES.items():
        lines = ["imagenet_selected_label100.txt", "hm trained_hybrid uniform0 bitdepth10"]
        for qp in QPS:
            folder = root / "compressed_feat" / "hm" / task / f"QP{qp}"
            folder.mkdir(parents=True)
            for name in names:
                f = originals[(task, name)]
                g = noisy(f, 0.05 * qp)
                np.save(folder / f"{name}.npy", g)
                mse, cos, cka = ref_metrics(f, g)
                lines.append(f"{name}.npy {gt_value(task, 0.1 * qp, rng):.8f} {mse:.8f} {cos:.4f} {cka:.4f}")
            lines.append("Feature MSE: 0.1")
        (root / "labels" / "hm").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "hm" / f"{task}.txt").write_text("\n".join(lines) + "\n")

    # Hyperprior: lambda folders (quality rises with lambda), labels.csv.
    rows = []
    for task, names in NAMES.items():
        for lam in LAMBDAS:
            label = f"lambda{lam}_epochs200_lr0.0001_bs16_patch256-256"
            folder = root / "compressed_feat" / "hyperprior_multi_task" / task / label
            folder.mkdir(parents=True)
            for name in names:
                sigma = 0.0008 / float(lam)
                np.save(folder / f"{name}.npy", noisy(originals[(task, name)], sigma))
                rows.append({"codec": "hyperprior_multi_task", "task": task, "rate": label, "image_id": name,
                             "gt_distortion": gt_value(task, sigma, rng)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)

    # VTM, cls only: flat files <name>_QP<n>.npy, the log inside the task folder.
    folder = root / "compressed_feat" / "vtm" / "cls"
    folder.mkdir(parents=True)
    lines = []
    for qp in QPS:
        for name in NAMES["cls"]:
            np.save(folder / f"{name}_QP{qp}.npy", noisy(originals[("cls", name)], 0.04 * qp))
            lines.append(f"{name} {gt_value('cls', 0.1 * qp, rng):.1f}")
    (folder / "vtm_eval_cls_all.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def seed_root(tmp_path):
    return make_seed_layout(tmp_path / "cfqa_dataset")


def test_order_rates():
    qp = order_rates(["QP12", "QP2", "QP20"])
    assert [(r.label, r.rate_point, r.rate_index) for r in qp] == [("QP2", 2, 0), ("QP12", 12, 1), ("QP20", 20, 2)]
    lam = order_rates(["lambda0.01_e", "lambda0.0005_e", "lambda0.002_e"])
    assert [(r.label, r.rate_point, r.rate_index) for r in lam] == [
        ("lambda0.0005_e", 0, 2), ("lambda0.002_e", 1, 1), ("lambda0.01_e", 2, 0)]
    with pytest.raises(DataError, match="cannot tell the rate of folder 'best'"):
        order_rates(["best", "QP2"])


def test_ingest_table(seed_root):
    table = ingest_seed(seed_root, METRICS, progress=False)
    counts = table.groupby(["codec", "task"]).size().to_dict()
    assert counts == {("hm", t): 2 * len(QPS) for t in NAMES} | {
        ("hyperprior_multi_task", t): 2 * len(LAMBDAS) for t in NAMES} | {("vtm", "cls"): 2 * len(QPS)}
    hm = table[table.codec == "hm"]
    assert sorted(hm.rate_point.unique()) == list(QPS) and (hm.family == "hevc").all()
    assert (hm.loc[hm.rate_point == 2, "rate_index"] == 0).all()
    hp = table[table.codec == "hyperprior_multi_task"]
    assert (hp.family == "learned").all()
    best = hp[hp.rate_index == 0]
    assert best.rate_label.str.startswith("lambda0.002_").all() and (best.rate_point == 2).all()
    assert table["bytes"].isna().all() and table["encode_s"].isna().all()

    # Every metric recomputed from the files; the reference's own logged numbers are matched.
    for row in table.sample(12, random_state=0).itertuples():
        f = np.load(seed_root / "org_feat" / row.task / f"{row.image_id}.npy")
        sub = seed_root / "compressed_feat" / row.codec / row.task
        path = sub / row.rate_label / f"{row.image_id}.npy"
        g = np.load(path if path.exists() else sub / f"{row.image_id}_{row.rate_label}.npy")
        for m in METRICS:
            assert getattr(row, m) == pytest.approx(compute_metric(m, f, g), rel=1e-12)
    assert np.allclose(hm["seed_mse"], hm["mse"], rtol=1e-5)
    assert np.abs(hm["seed_cosine"] - hm["cosine"]).max() <= 5.1e-5
    assert np.abs(hm["seed_cka"] - hm["cka_seed"]).max() <= 5.1e-5
    assert (hm["cka_seed"] < hm["cka"] - 0.1).loc[hm.task == "dpt"].all()  # the 1/8 of the reference loop
    summary, _ = run_protocol(hm, ["cka_seed", "seed_cka", "seed_mse"])
    sign = {(r.task, r.metric): r.sign for r in summary.itertuples()}
    assert sign[("cls", "seed_cka")] == sign[("cls", "cka_seed")] == -1 and sign[("cls", "seed_mse")] == 1

    # Labels: HM log values in QP order, task_score derived; hyperprior from labels.csv.
    log = (seed_root / "labels" / "hm" / "cls.txt").read_text().splitlines()
    name = NAMES["cls"][1]
    logged = [float(line.split()[1]) for line in log if line.startswith(name)]
    got = hm[(hm.task == "cls") & (hm.image_id == name)].sort_values("rate_point")
    assert got.gt_distortion.tolist() == logged
    assert got.task_score.tolist() == [float(v == 1.0) for v in logged]
    csv = pd.read_csv(seed_root / "labels.csv")
    one = csv.iloc[4]
    match = hp[(hp.task == one.task) & (hp.image_id == one.image_id) & (hp.rate_label == one.rate)]
    assert match.gt_distortion.item() == pytest.approx(one.gt_distortion)


def test_cli_from_seed_json_matches_scipy(seed_root, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--from-seed", str(seed_root), "--out", str(out), "--json", "--no-plots"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(stdout)
    table = pd.read_parquet(out / "table.parquet")
    assert {"hm/cls/cka_seed", "vtm/cls/mse", "hyperprior_multi_task/dpt/cosine", "hm/seg/seed_cka"} <= set(data)
    assert "vtm/seg/mse" not in data
    for key in ("hm/dpt/cosine", "hm/seg/mse", "hyperprior_multi_task/cls/cka", "vtm/cls/cka_seed"):
        codec, task, metric = key.split("/")
        cell = table[(table.codec == codec) & (table.task == task)]
        ps, ss = [], []
        for _, g in cell.groupby("image_id"):
            g = g.sort_values("rate_point")
            if np.ptp(g.gt_distortion) > 0:
                ps.append(pearsonr(g[metric], g.gt_distortion)[0])
                ss.append(spearmanr(g[metric], g.gt_distortion)[0])
        assert data[key]["n"] == len(ps)
        if ps:
            assert data[key]["plcc"] == pytest.approx(np.mean(ps), abs=1e-12)
            assert data[key]["srocc"] == pytest.approx(np.mean(ss), abs=1e-12)
    assert json.loads((out / "ingest.json").read_text())["rows"] == len(table)
    report = json.loads((out / "report.json").read_text())
    assert {v["key"] for v in report["verdicts"]} == {"cosine_best", "handcrafted_vs_learned", "seg_hardest",
                                                      "hevc_vs_vvc", "low_rate", "varies"}


def test_cli_from_seed_report(seed_root, capsys):
    code = main(["bench", "--from-seed", str(seed_root), "--codecs", "hm", "--tasks", "cls,dpt",
                 "--metrics", "mse,cosine,cka,seed_cka"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert stdout.startswith("- Table: seed ladder, 2 cls, 2 dpt originals")
    assert "| **Codec** | **Task** | **n** |" in stdout
    out = seed_root / "cfqa_bench"
    md = (out / "report.md").read_text()
    assert "| **hm** | Cls |" in md and "| **hm** | Dpt |" in md and "Seg |" not in md
    assert "| hand-crafted codecs are more predictable than learned ones (higher mean PLCC) | **not testable** |" in md
    assert (out / "plots" / "plcc_hist.png").is_file()
    assert not (out / "plots" / "rate_accuracy.png").exists()  # no bytes in the release


def _one_line_error(capsys, *argv):
    code = main(["bench", *argv])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cfqa bench: error: "), err
    return lines[0]


def test_from_seed_errors(seed_root, tmp_path, capsys):
    assert "unknown codec 'hevc'" in _one_line_error(capsys, "--from-seed", str(seed_root), "--codecs", "hevc",
                                                     "--json")
    assert "not a CFQA dataset folder" in _one_line_error(capsys, "--from-seed", str(tmp_path), "--json")
    assert "seed dataset folder not found" in _one_line_error(capsys, "--from-seed", str(tmp_path / "nope"))

    log = seed_root / "labels" / "hm" / "seg.txt"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(line for i, line in enumerate(lines) if i != 3) + "\n")  # drop one feature line
    msg = _one_line_error(capsys, "--from-seed", str(seed_root), "--codecs", "hm", "--tasks", "seg", "--json")
    assert "seg.txt" in msg and "has 3 line(s), expected one per rate point (4)" in msg

    log.unlink()
    msg = _one_line_error(capsys, "--from-seed", str(seed_root), "--codecs", "hm", "--tasks", "seg", "--json")
    assert "no ground-truth distortions for hm/seg" in msg

    (seed_root / "compressed_feat" / "hm" / "cls" / "QP6" / f"{NAMES['cls'][0]}.npy").unlink()
    msg = _one_line_error(capsys, "--from-seed", str(seed_root), "--codecs", "hm", "--tasks", "cls", "--json")
    assert f"'{NAMES['cls'][0]}' is missing at rate QP6" in msg

    bad = seed_root / "compressed_feat" / "hm" / "dpt" / "QP4" / f"{NAMES['dpt'][0]}.npy"
    np.save(bad, np.zeros((2, 4, T, D - 1), np.float32))
    msg = _one_line_error(capsys, "--from-seed", str(seed_root), "--codecs", "hm", "--tasks", "dpt", "--json")
    assert f"hm/dpt/QP4/{NAMES['dpt'][0]}" in msg and "shapes differ" in msg

    assert "unknown metric 'ssim'" in _one_line_error(capsys, "--from-seed", str(seed_root), "--metrics", "mse,ssim")


def test_ingest_cache_reuses_unchanged_groups(seed_root, tmp_path):
    cache = tmp_path / "cache"
    first = ingest_seed(seed_root, ["mse", "cka"], codecs=["hm"], tasks=["cls", "seg"], progress=False, cache_dir=cache)
    shards = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.parquet")}
    assert set(shards) == {"hm__cls.parquet", "hm__seg.parquet"}

    name = NAMES["seg"][0]
    path = seed_root / "compressed_feat" / "hm" / "seg" / "QP4" / f"{name}.npy"
    g = np.load(path)
    np.save(path, (g * 1.5).astype(np.float32))  # a changed file: its group is scored again
    second = ingest_seed(seed_root, ["mse", "cka"], codecs=["hm"], tasks=["cls", "seg"], progress=False,
                         cache_dir=cache)
    assert (cache / "hm__cls.parquet").stat().st_mtime_ns == shards["hm__cls.parquet"]
    assert (cache / "hm__seg.parquet").stat().st_mtime_ns != shards["hm__seg.parquet"]
    f = np.load(seed_root / "org_feat" / "seg" / f"{name}.npy")
    row = second[(second.task == "seg") & (second.image_id == name) & (second.rate_point == 4)]
    assert row.mse.item() == pytest.approx(compute_metric("mse", f, g * 1.5), rel=1e-12)
    pd.testing.assert_frame_equal(first[first.task == "cls"].reset_index(drop=True),
                                  second[second.task == "cls"].reset_index(drop=True))
