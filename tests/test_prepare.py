"""`imvedit prepare` on the layouts users have: hub-style datasets, folders with broken samples."""

import csv
import json

import datasets
import numpy as np
import pytest
from conftest import popen_interruptible
from PIL import Image
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.data.prepare import CHECKPOINT_EVERY, RESUME_FILE

runner = CliRunner()

LAYOUTS = {  # the real column names of two well-known edit datasets
    "instructpix2pix": {"source": "original_image", "target": "edited_image", "instruction": "edit_prompt", "caption": "edited_prompt"},
    "magicbrush": {"source": "source_img", "target": "target_img", "instruction": "instruction"},
}  # fmt: skip


def _dataset(layout: str, n: int = 4) -> datasets.Dataset:
    cols = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    data = {cols["source"]: images, cols["target"]: images[::-1], cols["instruction"]: [f"edit {i}" for i in range(n)]}
    features = {
        cols["source"]: datasets.Image(),
        cols["target"]: datasets.Image(),
        cols["instruction"]: datasets.Value("string"),
    }
    if "caption" in cols:
        data[cols["caption"]] = [f"result {i}" for i in range(n)]
        features[cols["caption"]] = datasets.Value("string")
    if layout == "magicbrush":  # MagicBrush also has ids and masks; they are ignored
        data["img_id"] = [str(i) for i in range(n)]
        features["img_id"] = datasets.Value("string")
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


@pytest.mark.parametrize("layout", ["instructpix2pix", "magicbrush"])
@pytest.mark.parametrize("storage", ["parquet", "save_to_disk"])
def test_presets_are_detected_in_parquet_and_saved_datasets(tmp_path, layout, storage):
    ds, src = _dataset(layout), tmp_path / "ds"
    if storage == "parquet":
        src.mkdir()
        ds.to_parquet(str(src / "train-00000.parquet"))
    else:
        ds.save_to_disk(str(src))
    r = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["preset"] == layout and summary["kept"] == 4 and summary["dropped"] == {}
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [x["instruction"] for x in rows] == [f"edit {i}" for i in range(4)]
    assert [x["caption"] for x in rows] == (
        [f"result {i}" for i in range(4)] if layout == "instructpix2pix" else [None] * 4
    )
    assert (tmp_path / "out" / rows[0]["source"]).is_file()


def test_an_explicit_preset_that_does_not_fit_is_a_one_line_error(tmp_path):
    src = tmp_path / "ds"
    _dataset("magicbrush").save_to_disk(str(src))
    r = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "out"), "--preset", "instructpix2pix"])
    assert r.exit_code == 2 and "original_image" in r.output
    assert not (tmp_path / "out").exists()


def test_a_folder_with_broken_samples_keeps_exactly_the_good_ones(tmp_path):
    """20 pairs, 10% of them broken in each way: 2 unreadable, 2 empty instructions, 2 exact duplicates,
    plus 1 too small, 1 extreme aspect and 1 whose target is framed differently."""
    root = tmp_path / "pairs"
    root.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        a = Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8))
        a.save(root / f"s{i}.png")
        a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / f"t{i}.png")
        rows.append([f"s{i}.png", f"t{i}.png", f"flip {i}"])
    (root / "s0.png").write_bytes(b"")  # unreadable: empty
    (root / "s1.png").write_text("not an image")  # unreadable: text
    rows[2][2] = rows[3][2] = "  "  # empty instructions
    rows.append(list(rows[4]))  # exact duplicates of kept pairs
    rows.append(list(rows[5]))
    Image.new("RGB", (8, 8)).save(root / "tiny.png")
    rows.append(["tiny.png", "tiny.png", "grow"])
    Image.new("RGB", (200, 20)).save(root / "wide.png")
    rows.append(["wide.png", "wide.png", "narrow"])
    Image.new("RGB", (40, 56)).save(root / "portrait.png")
    rows.append(["s6.png", "portrait.png", "rotate"])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "instruction"])
        w.writerows(rows)
    r = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["dropped"] == {
        "unreadable_image": 2, "empty_instruction": 2, "duplicate": 2, "too_small": 1, "extreme_aspect": 1,
        "size_mismatch": 1,
    }  # fmt: skip
    kept = [json.loads(x)["instruction"] for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert kept == [f"flip {i}" for i in range(4, 20)] and summary["kept"] == 16
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["dropped"] == summary["dropped"]


def _consumed(partial) -> int:
    """Rows an interrupted prepare has checkpointed (0 before the first checkpoint or mid-write)."""
    try:
        return json.loads((partial / RESUME_FILE).read_text())["consumed"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_an_interrupted_prepare_continues_and_equals_an_uninterrupted_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "imvedit", "prepare", "toy", "--limit", "600", "--seed", "3"]
    partial = tmp_path / ".resumed.partial"
    proc = popen_interruptible([*cmd, "-o", str(tmp_path / "resumed")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _consumed(partial) < 2 * CHECKPOINT_EVERY:
        time.sleep(0.02)  # until the program says it passed its second checkpoint
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    assert not (tmp_path / "resumed").exists()  # nothing at the destination
    done_before = json.loads((partial / ".resume.json").read_text())["consumed"]
    assert 0 < done_before < 600

    assert subprocess.run([*cmd, "-o", str(tmp_path / "resumed")], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "-o", str(tmp_path / "straight")], capture_output=True).returncode == 0
    assert not partial.exists()
    a, b = tmp_path / "resumed", tmp_path / "straight"
    assert (a / "manifest.jsonl").read_text() == (b / "manifest.jsonl").read_text()
    assert len((a / "manifest.jsonl").read_text().splitlines()) == 600
    assert json.loads((a / "prepare.json").read_text()) == json.loads((b / "prepare.json").read_text())
    names = sorted(p.name for p in (b / "images").iterdir())
    assert sorted(p.name for p in (a / "images").iterdir()) == names
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in names)
    assert not (a / ".resume.json").exists() and not (a / ".seen").exists()


class _Hub:
    """Stands in for the hub (which the tests cannot reach): records how `datasets.load_dataset` was
    called and answers with a dataset built here, as the hub would after download."""

    def __init__(self, monkeypatch, dataset):
        self.calls = []
        self.dataset = dataset
        monkeypatch.setattr(datasets, "load_dataset", self)

    def __call__(self, path, **kwargs):
        self.calls.append((path, kwargs))
        return self.dataset.to_iterable_dataset() if kwargs.get("streaming") else self.dataset


def test_hub_dataset_with_split_and_revision(tmp_path, monkeypatch):
    hub = _Hub(monkeypatch, _dataset("magicbrush", n=5))
    out = tmp_path / "p"
    r = runner.invoke(
        app, ["prepare", "osunlp/MagicBrush", "-o", str(out), "--split", "dev", "--revision", "abc123", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert hub.calls == [("osunlp/MagicBrush", {"split": "dev", "revision": "abc123", "streaming": False})]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["kept"] == 5 and summary["preset"] == "magicbrush" and summary["source"] == "osunlp/MagicBrush"
    assert summary["options"]["revision"] == "abc123"
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5


def test_hub_dataset_streamed_reads_only_what_limit_needs(tmp_path, monkeypatch):
    hub = _Hub(monkeypatch, _dataset("instructpix2pix", n=6))
    out = tmp_path / "p"
    r = runner.invoke(
        app, ["prepare", "timbrooks/ip2p", "-o", str(out), "--streaming", "--limit", "2", "--seed", "3", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert hub.calls[0][1]["streaming"] is True
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["caption"].startswith("result") for r in rows)
    again = tmp_path / "q"  # the seeded shuffle buffer is reproducible
    assert (
        runner.invoke(
            app, ["prepare", "timbrooks/ip2p", "-o", str(again), "--streaming", "--limit", "2", "--seed", "3"]
        ).exit_code
        == 0
    )
    assert [r["instruction"] for r in rows] == [
        json.loads(x)["instruction"] for x in (again / "manifest.jsonl").read_text().splitlines()
    ]


def test_hub_dataset_unreachable_offline_is_one_line_and_writes_nothing(tmp_path):
    # the real datasets library, with HF_HUB_OFFLINE=1 (conftest) and nothing cached
    out = tmp_path / "p"
    r = runner.invoke(app, ["prepare", "someone/not-cached-here", "-o", str(out)])
    assert r.exit_code == 1
    assert "Could not load hub dataset 'someone/not-cached-here'" in r.output and "HF_HUB_OFFLINE" in r.output
    assert not out.exists() and not (tmp_path / ".p.partial").exists()
    r = runner.invoke(app, ["prepare", str(tmp_path / "missing"), "-o", str(out), "--streaming"])
    assert r.exit_code == 2 and "does not exist" in r.output
