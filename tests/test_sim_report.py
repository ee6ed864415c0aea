"""The run report: headline first, clean HTML, small multiples, no hidden series, rendered in Chromium."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cfqa_core.cli import main
from cfqa_sim.report import PLOTS, headline, report_table, time_bin_s
from tests.support.sim_tables import synthetic_table, tiny_scenario

POLICIES = ["hq", "mid", "lq", "hq-again", "bw"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    synthetic_table(images=6).to_parquet(folder / "table.parquet")
    data = tiny_scenario("table.parquet", duration_s=10.0, drain_s=5.0)
    data["nodes"][0]["arrivals"] = {"kind": "periodic", "fps": 2.0}
    data["policies"] = {
        "hq": {"name": "fixed", "params": {"index": 0, "metric": "cosine"}},
        "mid": {"name": "fixed", "params": {"index": 3, "metric": "cosine"}},
        "lq": {"name": "fixed", "params": {"index": -1, "metric": "cosine"}},
        "hq-again": {"name": "fixed", "params": {"index": 0, "metric": "cosine"}},  # the same as hq, frame for frame
        "bw": {"name": "bandwidth", "params": {}},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = folder / "run"
    assert main(["compare", str(path), "--policies", ",".join(POLICIES), "--out", str(out), "--quiet"]) == 0
    return out


def test_report_opens_with_the_headline_and_has_every_figure(report_dir):
    page = (report_dir / "report.html").read_text()
    summary = json.loads((report_dir / "summary.json").read_text())
    body = page.split("<body>", 1)[1]
    assert body.startswith("<h1>")
    first_paragraph = re.search(r"<p[^>]*>(.*?)</p>", body).group(1)
    assert "headline" in re.search(r"<p[^>]*>", body).group(0)
    assert first_paragraph == headline(summary).replace("'", "&#x27;")
    figures = re.findall(r"<figure id='(fig-[a-z-]+)'>.*?src='data:image/png;base64,([^']+)'", page)
    assert [f for f, _ in figures] == ["fig-" + n.removesuffix(".png").replace("_", "-") for n, _ in PLOTS]
    for _, data in figures:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.size[0] >= 600 and img.size[1] >= 300


def test_report_html_has_no_markdown_or_python_reprs(report_dir):
    page = (report_dir / "report.html").read_text()
    text = re.sub(r"src='data:[^']+'", "", page)
    assert "`" not in text and "**" not in text
    assert not re.search(r"\{'|': |\[\(|None\b|nan\b", text)
    assert "Dropped frames by reason: hq: none;" in text


def test_identical_policies_are_named_not_hidden(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<p id='identical'>" in page and "hq = hq-again" in page
    md = (report_dir / "report.md").read_text()
    assert "hq = hq-again" in md


def test_capacity_panels_one_per_policy(report_dir):
    # small multiples: the capacity figure grows with the number of policies instead of overlaying them
    img = Image.open(report_dir / "plots" / "capacity.png")
    assert img.size[1] >= 1.7 * 100 * len(POLICIES)


def test_time_bins_are_never_finer_than_the_frame_period():
    assert time_bin_s(30.0, None, 0.5) == 0.5  # duration / 120 = 0.25 s would show the frame clock
    assert time_bin_s(30.0, 0.1, 0.5) == 0.5
    assert time_bin_s(600.0, None, 0.5) == 5.0
    assert time_bin_s(3600.0, None, 10.0) == 30.0


def test_table_and_headline_use_the_summary_fields_when_present():
    base = {"frames_total": 100, "frames_dropped": 2, "bytes_total": 500_000, "deadline_miss_rate": 0.05,
            "latency_p50_s": 0.1, "latency_p99_s": 0.4, "cls_top1": 0.9, "cls_accuracy_drop": 0.5,
            "bandwidth_savings_vs_baseline": 0.0, "dropped_by_reason": {"queue_full": 2, "stale": 0, "loss": 0}}
    rich = {**base, "success_rate": 0.93, "success_rate_ci": [0.9, 0.95], "bytes_per_captured_frame": 3000.0,
            "accuracy_delivered": 0.91, "savings_vs_matched_fixed": 0.25, "savings_vs_matched_fixed_ci": [0.2, 0.3]}
    cols = dict(report_table({"fixed": base, "cfqa": rich}))
    # one meaning per column: a policy without the field shows '-', not another quantity
    assert cols["success rate [95 % CI]"] == ["-", "93.0 % [90.0, 95.0]"]
    assert cols["kB per captured frame"] == ["5.00", "3.00"]
    assert cols["savings vs matched fixed [95 % CI]"] == ["-", "+25.0 % [+20.0, +30.0]"]
    assert dict(report_table({"fixed": base}))["on time"] == ["95.0 %"]
    assert cols["accuracy (delivered)"] == ["cls 0.900", "0.910"]
    text = "cfqa saves 25 % [20, 30] of the bytes of matched fixed at 93 % success."
    assert headline({"headline": text, "policies": {"cfqa": rich}}) == text
    # without one, a sentence from the figures, naming the baseline and the accuracy kept
    made = headline({"baseline_policy": "fixed",
                     "policies": {"fixed": base, "cfqa": {**base, "bandwidth_savings_vs_baseline": 0.4}}})
    assert made.startswith("cfqa sent 40.0 % fewer bytes than fixed at accuracy cls 0.900")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian 'chromium' not installed (scripts/setup.sh dev installs it)")
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    # The report as written, plus a probe that runs after load and writes what the browser rendered.
    probe = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.querySelectorAll('figure img')];"
        "const out=document.createElement('pre');out.id='probe';out.textContent=JSON.stringify({"
        "headline:document.getElementById('headline').innerText,"
        "headlineTop:document.getElementById('headline').getBoundingClientRect().top,"
        "figures:imgs.map(i=>({id:i.parentElement.id,w:i.naturalWidth,h:i.naturalHeight,shown:i.getBoundingClientRect().height}))"
        "});document.body.appendChild(out);});</script>"
    )
    page = tmp_path / "report.html"
    page.write_text((report_dir / "report.html").read_text().replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1200,900", "--virtual-time-budget=5000",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", done.stdout, re.S)
    assert found, done.stdout[-2000:]
    rendered = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                          .replace("&quot;", '"'))
    summary = json.loads((report_dir / "summary.json").read_text())
    assert rendered["headline"] == headline(summary)
    assert rendered["headlineTop"] < 200  # at the top of the page, above the fold
    ids = ["fig-" + n.removesuffix(".png").replace("_", "-") for n, _ in PLOTS]
    assert [f["id"] for f in rendered["figures"]] == ids
    for fig in rendered["figures"]:
        assert fig["w"] >= 600 and fig["h"] >= 300 and fig["shown"] > 100, fig  # decoded and laid out
