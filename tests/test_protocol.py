"""PLCC/SROCC protocol, report and ``cfqa bench --table``, checked against scipy on synthetic tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

import cfqa_core.commands
from cfqa_core.benchmark.protocol import codec_kind, per_feature_correlations, run_protocol
from cfqa_core.benchmark.report import FAILS, HOLDS, UNTESTABLE, build_report, verdicts
from cfqa_core.benchmark.table.schema import BASE_COLUMNS
from cfqa_core.cli import main
from cfqa_core.errors import DataError, MetricError

BENCH_CMD = "cfqa_core.commands.bench_cmd"
QPS = (22, 27, 32, 37, 42)
FAMILY = {"hevc": "hevc", "vvc": "vvc", "hyper": "learned"}


@pytest.fixture(autouse=True)
def bench_command(monkeypatch):
    if BENCH_CMD not in cfqa_core.commands._MODULES:
        monkeypatch.setattr(cfqa_core.commands, "_MODULES", cfqa_core.commands._MODULES + (BENCH_CMD,))


def make_table(*, images=6, tasks=("cls", "seg", "dpt"), codecs=("hevc", "hyper"), noise=None, seed=0,
               dist_scale=1.0):
    """Each feature: a latent degradation d rising with QP; the distortion follows d (seg: -d),
    each metric follows d with its own noise level (cosine the least by default)."""
    noise = noise or {"mse": 1.0, "cosine": 0.0, "cka": 0.8}
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for codec in codecs:
            extra = 0.0 if FAMILY[codec] != "learned" else 0.3
            for i in range(images):
                d = np.sort(rng.uniform(0, 1, len(QPS)))
                dist = d + rng.normal(0, dist_scale * (0.02 + extra + (0.3 if task == "seg" else 0.0)), len(QPS))
                if task == "cls":
                    dist = np.round(1 + 4 * np.clip(dist, 0, None))
                if task == "seg":
                    dist = -dist
                row_metrics = {m: d + rng.normal(0, s, len(QPS)) for m, s in noise.items()}
                for k, qp in enumerate(QPS):
                    rows.append({
                        "image_id": f"im{i}", "task": task, "codec": codec, "rate_point": qp,
                        "family": FAMILY[codec], "rate_index": k, "bytes": 1000 >> k, "meta_bytes": 50,
                        "bpfp": 8.0 * (1000 >> k) / 4096, "encode_s": 0.01, "decode_s": 0.002,
                        "gt_distortion": float(dist[k]), "task_score": float(1 - d[k]), "ref_task_score": 1.0,
                        "feature_elements": 4096,
                        # MSE rises with d; similarities fall with it.
                        "mse": float(0.01 + row_metrics["mse"][k] ** 2) if "mse" in row_metrics else np.nan,
                        "cosine": float(1 - 0.01 * row_metrics["cosine"][k]) if "cosine" in row_metrics else np.nan,
                        "cka": float(1 - 0.02 * row_metrics["cka"][k]) if "cka" in row_metrics else np.nan,
                    })
    return pd.DataFrame(rows)


def scipy_reference(table, metric):
    """Mean of per-feature scipy correlations per (codec, task), skipping constant series."""
    out = {}
    for (codec, task), cell in table.groupby(["codec", "task"]):
        ps, ss, const = [], [], 0
        for _, g in cell.groupby("image_id"):
            g = g.sort_values("rate_point")
            x, y = g[metric].to_numpy(), g["gt_distortion"].to_numpy()
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                continue  # a feature with a NaN/Inf value has no correlation
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                const += 1
                continue
            ps.append(pearsonr(x, y)[0])
            ss.append(spearmanr(x, y)[0])
        out[f"{codec}/{task}/{metric}"] = (np.mean(ps) if ps else None, np.mean(ss) if ss else None, len(ps), const)
    return out


def test_protocol_matches_scipy_per_feature_means():
    table = make_table()
    # One feature with a constant distortion, one with a non-finite metric value, one with ties.
    table.loc[(table.codec == "hevc") & (table.task == "dpt") & (table.image_id == "im1"), "gt_distortion"] = 0.25
    hole = (table.codec == "hyper") & (table.task == "seg") & (table.image_id == "im2") & (table.rate_point == 27)
    table.loc[hole, "cka"] = np.nan
    summary, results = run_protocol(table, ["mse", "cosine", "cka"])
    assert len(results) == 2 * 3 * 3
    for metric in ("mse", "cosine", "cka"):
        for key, (p, s, n, const) in scipy_reference(table, metric).items():
            r = results[key]
            assert r["plcc"] == pytest.approx(p, abs=1e-12), key
            assert r["srocc"] == pytest.approx(s, abs=1e-12), key
    assert results["hevc/dpt/mse"]["n"] == 5 and results["hevc/dpt/mse"]["n_constant"] == 1
    assert results["hyper/seg/cka"]["n"] == 5 and results["hyper/seg/cka"]["n_nonfinite"] == 1
    assert results["hyper/seg/mse"]["n"] == 6 and results["hyper/seg/mse"]["n_nonfinite"] == 0
    row = summary[(summary.codec == "hevc") & (summary.task == "cls") & (summary.metric == "cosine")].iloc[0]
    assert row.n_features == 6 and row.codec_kind == "handcrafted"


def test_ragged_rate_points_and_short_features():
    table = make_table(tasks=("dpt",), codecs=("hevc",), images=4)
    table = table[~((table.image_id == "im0") & (table.rate_point == 42))]          # 4 points left
    table = table[~((table.image_id == "im1") & (table.rate_point.isin([22, 27, 32])))]  # 2 points: too few
    pf = per_feature_correlations(table, ["cosine"])
    status = dict(zip(pf.image_id, pf.status))
    assert status == {"im0": "ok", "im1": "short", "im2": "ok", "im3": "ok"}
    g = table[table.image_id == "im0"].sort_values("rate_point")
    got = pf.loc[pf.image_id == "im0", "plcc"].item()
    assert got == pytest.approx(pearsonr(g.cosine, g.gt_distortion)[0], abs=1e-12)
    assert pf.loc[pf.image_id == "im0", "n_points"].item() == 4


def test_sign_convention_is_raw_and_oriented_is_positive():
    table = make_table(noise={"mse": 0.01, "cosine": 0.01, "cka": 0.01}, images=5)
    summary, results = run_protocol(table, ["mse", "cosine", "cka"])
    # Distortion rising with degradation (dpt): MSE +, cosine/CKA -; seg's mIoU difference falls: flipped.
    assert results["hevc/dpt/mse"]["plcc"] > 0.8 and results["hevc/dpt/cosine"]["plcc"] < -0.8
    assert results["hevc/seg/mse"]["plcc"] < 0 and results["hevc/seg/cosine"]["plcc"] > 0
    sign = {(r.task, r.metric): r.sign for r in summary.itertuples()}
    assert sign[("dpt", "mse")] == 1 and sign[("cls", "mse")] == 1 and sign[("seg", "mse")] == -1
    assert sign[("dpt", "cosine")] == -1 and sign[("cls", "cka")] == -1 and sign[("seg", "cka")] == 1
    assert np.allclose(summary["plcc_oriented"], summary["plcc"] * summary["sign"])
    clean = summary[(summary.codec == "hevc") & (summary.task != "seg")]
    assert (clean["plcc_oriented"] > 0.8).all()


def test_verdicts_follow_the_numbers():
    # Nearly noise-free distortions: cosine (noise-free) is best and most stable.
    found = {v.key: v for v in verdicts(*_summary_and_pf(make_table(dist_scale=0.05, images=12)))}
    assert found["cosine_best"].status == HOLDS, found["cosine_best"].detail
    first = found["cosine_best"].comparisons[0]
    assert first.label == "mean PLCC cosine - mse" and first.lo > 0
    assert f"{first.estimate:+.3f}" in found["cosine_best"].detail
    # MSE made the cleanest metric: cosine is no longer the best.
    flipped = make_table(noise={"mse": 0.0, "cosine": 1.0, "cka": 0.8}, dist_scale=0.05, images=12)
    found = {v.key: v for v in verdicts(*_summary_and_pf(flipped))}
    assert found["cosine_best"].status == FAILS

    only_block = make_table(codecs=("hevc", "vvc"), tasks=("cls", "dpt"))
    found = {v.key: v for v in verdicts(*_summary_and_pf(only_block))}
    assert found["handcrafted_vs_learned"].status == UNTESTABLE and "learned" in found["handcrafted_vs_learned"].detail
    assert found["seg_hardest"].status == UNTESTABLE
    no_cos = make_table(noise={"mse": 0.1})
    found = {v.key: v for v in verdicts(*_summary_and_pf(no_cos, ["mse"]))}
    assert found["cosine_best"].status == UNTESTABLE


def _summary_and_pf(table, metrics=("mse", "cosine", "cka")):
    from cfqa_core.benchmark.protocol import summarise

    pf = per_feature_correlations(table, list(metrics))
    return summarise(pf)[0], pf


def test_codec_kind():
    assert codec_kind("hevc-x265", "hevc") == "handcrafted"
    assert codec_kind("hm") == "handcrafted" and codec_kind("vtm") == "handcrafted"
    assert codec_kind("hyperprior_multi_task") == "learned"
    assert codec_kind("mystery", None) == "unknown"


def test_protocol_bad_input():
    table = make_table(images=3, tasks=("cls",), codecs=("hevc",))
    with pytest.raises(MetricError, match="unknown metric 'ssim'"):
        run_protocol(table, ["ssim"])
    with pytest.raises(DataError, match="lacks column 'psnr'"):
        run_protocol(table, ["psnr"])
    with pytest.raises(DataError, match="lacks column.*gt_distortion"):
        run_protocol(table.drop(columns="gt_distortion"), ["mse"])
    with pytest.raises(DataError, match="duplicate rows for hevc/cls/im0 at rate point 22"):
        run_protocol(pd.concat([table, table.iloc[:1]]), ["mse"])
    with pytest.raises(DataError, match="no metric column"):
        run_protocol(table.drop(columns=["mse", "cosine", "cka"]))


def test_report_files(tmp_path):
    table = make_table(images=10, tasks=("cls", "seg"), codecs=("hevc", "hyper"))
    rep = build_report(table, tmp_path / "rep", ["mse", "cosine", "cka"], source="synthetic")
    out = tmp_path / "rep"
    md = (out / "report.md").read_text()
    assert ("| **Codec** | **Task** | **n** | **MSE PLCC** | **MSE SROCC** | **Cosine PLCC** | **Cosine SROCC** "
            "| **CKA PLCC** | **CKA SROCC** |") in md
    r = rep.results["hevc/seg/cosine"]
    assert f"{r['plcc']:.4f} [{r['plcc_ci'][0]:+.3f}, {r['plcc_ci'][1]:+.3f}]" in md
    for v in rep.verdicts:
        assert v.claim in md and v.status in md
    # The summary opens the report, before any table; the HTML page has the same order.
    assert md.index("## Summary") < md.index("| **Codec**")
    assert all(f"- {h}" in md for h in rep.headline) and any("Findings of the paper" in h for h in rep.headline)
    page = (out / "report.html").read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<table>") and '<img alt="' in page
    data = json.loads((out / "report.json").read_text())
    assert data["results"]["hyper/cls/mse"]["n"] == rep.results["hyper/cls/mse"]["n"]
    assert [v["status"] for v in data["verdicts"]] == [v.status for v in rep.verdicts]
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == 2 * 2 * 3
    for name in ("scatter_cosine", "plcc_hist", "rate_accuracy", "correlations",
                 "findings"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    ra = pd.read_csv(out / "rate_accuracy.csv")
    cell = ra[(ra.task == "cls") & (ra.codec == "hevc") & (ra.rate_point == 32)]
    expect = table[(table.task == "cls") & (table.codec == "hevc") & (table.rate_point == 32)]["task_score"].mean()
    assert cell["task_score"].item() == pytest.approx(expect)


# ---- CLI ---------------------------------------------------------------------------------------


def write_table(path, table):
    full = table.copy()
    for c in BASE_COLUMNS:
        if c not in full.columns:
            full[c] = np.nan
    full.to_parquet(path, index=False)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_json(tmp_path, capsys):
    table = make_table(images=10, tasks=("cls", "dpt"))
    path = write_table(tmp_path / "table.parquet", table)
    code, out, err = run(capsys, "bench", "--table", str(path), "--metrics", "mse,cka", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {f"{c}/{t}/{m}" for c in ("hevc", "hyper") for t in ("cls", "dpt") for m in ("mse", "cka")}
    ref = scipy_reference(table, "cka")
    for key, (p, s, n, _) in ref.items():
        assert data[key]["plcc"] == pytest.approx(p, abs=1e-12) and data[key]["srocc"] == pytest.approx(s, abs=1e-12)
        assert data[key]["n"] == n
        assert set(data[key]) == {"plcc", "plcc_ci", "srocc", "srocc_ci", "n"}
        lo, hi = data[key]["plcc_ci"]
        assert lo <= data[key]["plcc"] <= hi and lo < hi
        lo, hi = data[key]["srocc_ci"]
        assert lo <= data[key]["srocc"] <= hi
    assert not (tmp_path / "report").exists()  # --json without --out writes nothing


def test_cli_table_report(tmp_path, capsys):
    path = write_table(tmp_path / "table.parquet", make_table(images=3, tasks=("seg",), codecs=("hevc",)))
    code, out, err = run(capsys, "bench", "--table", str(tmp_path), "--no-plots")
    assert code == 0, err
    assert out.startswith("- Table: operating ladder, 3 seg originals") and "| **Codec** | **Task** | **n** |" in out
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.json").is_file()
    assert path.is_file()


@pytest.mark.parametrize("argv,needle", [
    (["--table", "{tmp}/missing.parquet"], "benchmark table not found"),
    (["--table", "{tmp}/table.parquet", "--metrics", "mse,ssim"], "unknown metric 'ssim'"),
    (["--table", "{tmp}/table.parquet", "--metrics", "psnr"], "lacks column 'psnr'"),
    (["--table", "{tmp}/bad.parquet"], "lacks column(s): family"),
    (["--table", "{tmp}/table.parquet", "--metrics", "learned"], "in-sample"),
    (["--table", "{tmp}/table.parquet", "--resamples", "100"], "at least 1000"),
    (["--table", "{tmp}/table.parquet", "--fidelity"], "output_change"),
    (["--table", "{tmp}/table.parquet", "--paper-table", "{tmp}/missing.parquet"], "benchmark table not found"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, needle):
    write_table(tmp_path / "table.parquet", make_table(images=3, tasks=("cls",), codecs=("hevc",)))
    make_table(images=3, tasks=("cls",), codecs=("hevc",)).drop(columns="family").to_parquet(tmp_path / "bad.parquet")
    code, out, err = run(capsys, "bench", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cfqa bench: error: ") and needle in lines[0], err


def test_cli_paper_table_side_by_side(tmp_path, capsys):
    for name, ladder, seed in (("op", "operating", 0), ("paper", "paper", 1)):
        (tmp_path / name).mkdir()
        write_table(tmp_path / name / "table.parquet", make_table(images=10, tasks=("cls", "seg"), seed=seed))
        (tmp_path / name / "build.json").write_text(json.dumps({"config": {"ladder": ladder}}))
    code, out, err = run(capsys, "bench", "--table", str(tmp_path / "op"), "--paper-table", str(tmp_path / "paper"),
                         "--metrics", "mse,cosine", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"table", "paper_table"}
    assert data["table"]["hevc/seg/cosine"]["plcc"] != data["paper_table"]["hevc/seg/cosine"]["plcc"]
    assert data["paper_table"]["hyper/cls/mse"]["plcc_ci"][0] <= data["paper_table"]["hyper/cls/mse"]["plcc"]
    code, out, err = run(capsys, "bench", "--table", str(tmp_path / "op"), "--paper-table", str(tmp_path / "paper"),
                         "--metrics", "mse,cosine", "--out", str(tmp_path / "rep"), "--no-plots")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## PLCC / SROCC on the operating ladder" in md and "## PLCC / SROCC on the paper ladder" in md
    assert "| Finding | operating ladder | paper ladder |" in md
    assert "Ladder: hevc 22-42 (5 points); hyper 22-42 (5 points)." in md
    assert any(line.startswith("- On the paper ladder: cosine's PLCC interval excludes 0 in")
               for line in md.splitlines())
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["ladder"] == "operating" and report["paper_ladder"]["ladder"] == "paper"


def test_learned_column_is_never_reported_in_sample(tmp_path):
    from cfqa_core.benchmark.report import learned_loco_markdown

    table = make_table(images=3, tasks=("dpt",), codecs=("hevc",))
    table["learned"] = table["mse"]  # an in-sample column that would track the distortion as well as MSE
    rep = build_report(table, None, source="synthetic")
    assert "learned" not in set(rep.summary["metric"]) and not any(k.endswith("/learned") for k in rep.results)
    assert "Learned PLCC" not in rep.table_markdown
    loco = tmp_path / "loco.json"
    loco.write_text(json.dumps([{"codec": "hevc", "task": "dpt", "n": 3, "learned_plcc": 0.5, "cosine_plcc": 0.25,
                                 "learned_srocc": 0.4, "cosine_srocc": 0.4}]))
    md = learned_loco_markdown(loco)
    assert "| hevc | dpt | 3 | +0.500 | +0.250 | +0.400 | +0.400 |" in md and "PLCC +0.500 vs cosine +0.250" in md
    assert "No leave-one-codec-out result" in learned_loco_markdown(tmp_path / "missing.json")


def test_report_tests_every_task_aware_metric_against_cosine(tmp_path):
    """One verdict per task-aware column: a score that tracks the damage holds, a noisy one does not."""
    table = make_table(images=40, tasks=("cls", "seg"), codecs=("hevc",), noise={"mse": 1.0, "cosine": 3.0},
                       dist_scale=0.2)
    rng = np.random.default_rng(1)
    damage = 1.0 - table["task_score"].to_numpy()
    table["proxy"] = damage + rng.normal(0, 0.01, len(table))
    table["proxy_risk"] = damage + rng.normal(0, 3.0, len(table))
    build_report(table, tmp_path / "rep", ["mse", "cosine", "proxy", "proxy_risk"], source="synthetic")
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(data["task_aware"]) == {"proxy", "proxy_risk"}
    assert data["task_aware"]["proxy"]["status"] == HOLDS
    assert data["task_aware"]["proxy_risk"]["status"] == FAILS
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Task-aware metric `proxy` against cosine: holds" in md
    assert "Task-aware metric `proxy_risk` against cosine: does not hold" in md
