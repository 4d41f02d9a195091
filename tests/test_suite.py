"""`imvedit eval --suite paper --quick`: every variant trained, evaluated and on the generated page."""

import json
import math
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.evaluation.suite import VARIANT_NAMES
from imvedit.models.bases import SHAPES_WAN_DIR

runner = CliRunner()
pytestmark = pytest.mark.skipif(
    not (SHAPES_WAN_DIR / "model_index.json").is_file(), reason="the suite runs on the bundled shapes-wan"
)


def test_quick_suite_writes_every_variants_row_and_resumes_without_retraining(tmp_path):
    report, work = tmp_path / "docs", tmp_path / "work"
    args = ["eval", "--suite", "paper", "--quick", "--report", str(report), "--work", str(work), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    results = json.loads((report / "results" / "results.json").read_text())
    assert [row["name"] for row in results["rows"]] == list(VARIANT_NAMES)
    for row in results["rows"]:
        for key in ("edit_psnr", "edit_region_psnr", "temporal_error", "edit_seconds_per_frame"):
            assert math.isfinite(row[key]), (row["name"], key)
        if row["name"] == "bundled":  # the shipped adapter: trained elsewhere, its size read from its file
            assert row["trainable_parameters"] > 0 and row["seen"] is None and row["training_seconds"] is None
            continue
        trained = row["name"] != "sdedit"
        assert (row["trainable_parameters"] > 0) == trained and (row["seen"] > 0) == trained
    by = {row["name"]: row for row in results["rows"]}
    assert by["concat-video"]["seen_unit"] == "clips" and by["imvedit"]["seen_unit"] == "pairs"
    assert by["per-frame"]["trainable_parameters"] == by["imvedit"]["trainable_parameters"]  # the same adapter
    page = (report / "results.md").read_text()
    assert "Quick mode" in page and results["machine"]["torch"] in page
    unedited = results["rows"][0]["edit_region_psnr_unedited"]  # the setup says what doing nothing scores
    assert math.isfinite(unedited) and f"the unedited source {unedited:.2f} dB" in page.replace("\n", " ")
    for name in VARIANT_NAMES:
        assert f"| {name} |" in page
    for claim in ("**1.", "**2.", "**3.", "Edits happen (imvedit vs", "Edits happen (bundled vs"):
        assert claim in page
    for plot in ("quality_vs_compute.svg", "temporal_error.svg"):
        root = ET.parse(report / "results" / plot).getroot()  # noqa: S314 - a file this test just wrote
        assert root.tag.endswith("svg") and len(root) > 10

    assert results["reused_runs"] == [] and "from scratch" in page

    stamps = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/adapter.safetensors")}
    r = runner.invoke(app, args + ["--only", "imvedit,per-frame"])
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    again = json.loads((report / "results" / "results.json").read_text())
    assert again["reused_runs"] == ["imvedit"]
    assert again["training_seconds"] == pytest.approx(by["imvedit"]["training_seconds"], abs=0.05)
    # the rerun rows replace theirs on the page; the rest are kept, and the page says which came from where
    assert [row["name"] for row in again["rows"]] == list(VARIANT_NAMES)
    rest = [n for n in VARIANT_NAMES if n not in ("imvedit", "per-frame")]
    assert [inv["rows"] for inv in again["invocations"]] == [rest, ["imvedit", "per-frame"]]
    assert {r["name"]: r for r in again["rows"]}["sdedit"] == by["sdedit"]
    assert "The rows come from 2 invocations" in (report / "results.md").read_text()

    # other options: the earlier page is not joined, the new one has this run's rows only
    r = runner.invoke(app, args + ["--only", "sdedit", "--clips", "2"])
    assert r.exit_code == 0, r.output
    other = json.loads((report / "results" / "results.json").read_text())
    assert [row["name"] for row in other["rows"]] == ["sdedit"] and "invocations" not in other


def test_unknown_variants_and_a_missing_report_are_one_line_errors(tmp_path):
    r = runner.invoke(app, ["eval", "--suite", "paper", "--quick", "--report", str(tmp_path), "--only", "lora"])
    assert r.exit_code == 2 and "Unknown variant" in r.output
    r = runner.invoke(app, ["eval", "--suite", "paper", "--quick"])
    assert r.exit_code == 2 and "--report" in r.output


def _row(name, region, temporal, seconds=100.0, groups=None):
    row = {"name": name, "edit_region_psnr": region, "temporal_error": temporal, "training_seconds": seconds,
           "edit_seconds_per_frame": 0.1}  # fmt: skip
    if groups:
        row["per_group"] = groups
    return row


def test_each_headline_says_whether_its_claim_held_from_the_numbers():
    """The verdicts are computed against the thresholds on the page, per group of edit kinds: changing a
    number changes the verdict."""
    from imvedit.evaluation.suite import claims

    def g(local, background, glob, temporal=0.01):
        return {k: {"edit_region_psnr": v, "temporal_error": temporal} for k, v in
                (("local", local), ("background", background), ("global", glob))}  # fmt: skip

    rows = [
        _row("imvedit", 20.0, 0.01, 100.0, g(22.0, 18.0, 24.0)),
        _row("concat-video", 20.0, 0.01, 1000.0, g(21.5, 21.0, 23.0)),
        _row("per-frame", 19.0, 0.03, 100.0, g(21.0, 17.0, 23.0, temporal=0.03)),
        _row("sdedit", 13.0, 0.02, 0.0, g(14.0, 15.0, 16.0)),
    ]
    text = "\n".join(claims({"rows": rows}))
    assert (
        "**1. Image pairs edit videos about as well as video pairs (imvedit vs concat-video) — held for local, global only."
        in text
    )
    assert "background 18.00 vs 21.00 (not held)" in text and "− 1 dB" in text
    assert "consistent (per-frame vs imvedit) — held for every group." in text
    assert "**3. A small fraction of the compute — held.**" in text
    assert "Edits happen (imvedit vs untrained SDEdit) — held for local, global only." in text
    rows[3]["per_group"]["local"]["edit_region_psnr"] = 18.0  # SDEdit now within 5 dB of imvedit
    assert "Edits happen (imvedit vs untrained SDEdit) — held for global only." in "\n".join(claims({"rows": rows}))
    assert "bundled vs" not in text  # no row, no verdict
    rows.append(_row("bundled", 25.0, 0.01, None, g(24.0, 19.0, 30.0)))
    bundled = claims({"rows": rows})[-1]
    assert bundled.startswith("**Edits happen (bundled vs untrained SDEdit) — held for local, global only.**")
    assert (
        "bundled's edit_region_psnr at least SDEdit's + 5 dB" in bundled
        and "background 19.00 vs 15.00 (not held)" in bundled
    )
    # rows from before groups were kept: one verdict over all kinds
    old = [_row("imvedit", 20.0, 0.01), _row("sdedit", 17.0, 0.02)]
    assert "— not held.** Threshold: imvedit's edit_region_psnr at least SDEdit's + 5 dB" in claims({"rows": old})[0]


def test_a_page_joined_from_a_run_that_trained_nothing_says_so():
    """`--only bundled` evaluates the shipped adapter and trains nothing: its part of the page says that rather
    than "training 0.0 min"."""
    from imvedit.evaluation.suite import _timing

    def invocation(rows, training):
        return {"rows": rows, "date": "D", "seconds": 90.0, "training_seconds": training, "evaluation_seconds": 60.0}

    text = _timing({"invocations": [invocation(["imvedit"], 120.0), invocation(["bundled"], 0.0)]})
    assert "imvedit on D (training 2.0 min, by the runs' own timings, evaluating 1.0 min)" in text
    assert "bundled on D (nothing trained, evaluating 1.0 min)" in text


def test_the_compute_plot_of_a_page_with_no_trained_row_draws_empty_axes():
    """`--only bundled` on a page it cannot join (another machine's) leaves a row trained elsewhere, which has no
    point on the quality-against-compute plot: the plot is drawn without points rather than the page failing."""
    from imvedit.evaluation.suite import scatter_svg

    def labels(rows):
        svg = ET.fromstring(scatter_svg(rows))  # noqa: S314 - SVG this test just made
        return [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]

    bundled = {"name": "bundled", "group": "method", "edit_psnr": 26.0, "training_seconds": None}
    assert "edit quality vs training compute" in labels([bundled]) and "bundled" not in labels([bundled])
    trained = {"name": "imvedit", "group": "method", "edit_psnr": 18.0, "training_seconds": 230.0}
    assert "imvedit" in labels([bundled, trained])
