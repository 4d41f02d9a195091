"""`imvedit edit --dry-run`: the memory plan of an edit against a live-storage measurement on the meta device
(real modules at full size, real configs), and the figures issue 23 asks of it."""

import json

import pytest
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.errors import UsageError
from imvedit.memory.edit_plan import EditShape, MemoryOptions, choose, plan_edit
from imvedit.memory.measure import measure_edit
from imvedit.memory.spec import read_base_spec

CONFIGS = "tests/data/wan_configs"
runner = CliRunner()
CHECKED = ("step", "source_cache", "text_encoder", "vae_encode", "vae_decode")


def _spec(name: str):
    return read_base_spec(f"{CONFIGS}/{name}")


@pytest.mark.parametrize("base", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
@pytest.mark.parametrize("gpu", [24, 80])
def test_plan_matches_the_meta_measurement(base, gpu):
    """The plan chosen for a 24 GB and an 80 GB card, 832x480, 81 frames: every component and the device peak
    within 10 % of what the real modules keep alive on the meta device."""
    spec, shape = _spec(base), EditShape(832, 480, 81)
    plan = choose(spec, shape, {}, gpu).chosen
    measured = measure_edit(spec, shape, plan.options)
    for key in CHECKED:
        assert plan.components[key] == pytest.approx(measured.components[key], rel=0.1, abs=0.01), key
    for key, value in measured.phases.items():
        assert plan.phases[key] == pytest.approx(value, rel=0.1), key
    assert plan.peak_gib == pytest.approx(measured.peak_gib, rel=0.1)


@pytest.mark.parametrize("cache", ["device", "cpu", "recompute"])
def test_every_source_cache_mode_matches_the_measurement(cache):
    """Each mode once (1.3B with the VAE out of the way: a 9-frame clip keeps the run short)."""
    spec, shape = _spec("wan2.1-t2v-1.3b"), EditShape(832, 480, 9, source_guidance=True)
    options = MemoryOptions(source_cache=cache, cfg_batch="off" if cache == "cpu" else "on", base_dtype="fp8")
    plan, measured = plan_edit(spec, shape, options), measure_edit(spec, shape, options)
    for key in ("step", "source_cache", "source_stream"):
        assert plan.components[key] == pytest.approx(measured.components[key], rel=0.1, abs=0.01), key
    assert plan.phases["denoise"] == pytest.approx(measured.phases["denoise"], rel=0.1)


def _dry_run(*args) -> dict:
    result = runner.invoke(app, ["edit", "--dry-run", "--json", *args])
    assert result.exit_code == 0, result.output

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(result.stdout, parse_constant=refuse)


@pytest.mark.parametrize(("size", "limit"), [("832x480", 20), ("1280x720", 22)])
def test_a_24_gb_card_edits_81_frames_with_1_3b(size, limit):
    r = _dry_run("--model", f"{CONFIGS}/wan2.1-t2v-1.3b", "--size", size, "--frames", "81", "--gpu-memory", "24")
    assert r["fits"] is True
    assert r["peak_gib"] <= limit
    assert set(r["options"]) >= {"source_cache", "cfg_batch", "offload", "base_dtype", "sda_chunking", "vae_tiling"}
    assert r["components"]["step"] > 0 and r["alternatives"][-1]["fits"] is True


@pytest.mark.parametrize("size", ["832x480", "1280x720"])
def test_14b_fits_80_gb_with_auto(size):
    r = _dry_run("--model", f"{CONFIGS}/wan2.1-t2v-14b", "--size", size, "--frames", "81", "--gpu-memory", "80")
    assert r["fits"] is True
    assert r["peak_gib"] <= 75


@pytest.mark.parametrize("size", ["832x480", "1280x720"])
def test_14b_has_a_24_gb_plan_with_fp8_and_offload(size):
    r = _dry_run(
        "--model", f"{CONFIGS}/wan2.1-t2v-14b", "--size", size, "--frames", "81", "--gpu-memory", "24",
        "--base-dtype", "fp8",
    )  # fmt: skip
    assert r["fits"] is True
    assert r["options"]["base_dtype"] == "fp8" and r["options"]["offload"] != "none"
    assert r["peak_gib"] <= 24 * 0.9


def test_the_sda_in_pieces_matches_the_measurement():
    """14B at 720p on a 24 GB card needs the SDA in pieces: its batch-1 step is 21 GiB with the SDA whole."""
    spec, shape = _spec("wan2.1-t2v-14b"), EditShape(832, 480, 81)
    whole = MemoryOptions(source_cache="cpu", offload="group", base_dtype="fp8")
    pieces = MemoryOptions(source_cache="cpu", offload="group", base_dtype="fp8", sda_chunking="on")
    plan, measured = plan_edit(spec, shape, pieces), measure_edit(spec, shape, pieces)
    assert plan.components["step"] == pytest.approx(measured.components["step"], rel=0.1)
    assert plan.peak_gib == pytest.approx(measured.peak_gib, rel=0.1)
    assert plan.components["step"] < 0.5 * plan_edit(spec, shape, whole).components["step"]


def test_options_given_are_kept_and_the_verdict_says_when_nothing_fits():
    r = _dry_run(
        "--model", f"{CONFIGS}/wan2.1-t2v-14b", "--size", "832x480", "--gpu-memory", "24",
        "--source-cache", "device", "--offload", "none",
    )  # fmt: skip
    assert r["fits"] is False
    assert r["options"]["source_cache"] == "device" and r["options"]["offload"] == "none"
    assert all(a["options"]["source_cache"] == "device" for a in r["alternatives"])


def test_dry_run_needs_no_input_and_writes_nothing(tmp_path, monkeypatch):
    """The bundled toy by default, as `imvedit edit` picks it: a tiny plan, and no file appears anywhere we
    can see (the working directory, the home directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("IMVEDIT_MODEL", "IMVEDIT_ADAPTER", "IMVEDIT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    r = _dry_run("--gpu-memory", "24")
    assert r["model"] == "shapes-wan" and r["fits"] is True
    assert r["peak_gib"] < 0.5
    assert list(tmp_path.iterdir()) == []


def test_dry_run_plans_the_guidance_branches_the_edit_runs(monkeypatch):
    """An edit with guidance 1 runs one branch: the plan counts the negative branch only when some step's scale,
    given or the base's default (on the toy 1.5 above sigma 0.8 and 1 below, 5 on Wan), is not 1."""
    import imvedit.memory.dry_run as dry_run

    planned = []

    def spy(spec, shape, *args, **kwargs):
        planned.append(shape.guidance)
        return choose(spec, shape, *args, **kwargs)

    monkeypatch.setattr(dry_run, "choose", spy)
    below = ["--guidance-2", "3", "--guidance-boundary", "0.5"]
    wan = ["--model", f"{CONFIGS}/wan2.1-t2v-1.3b", "--size", "832x480"]
    for flags in ([], ["--guidance", "1"], ["--guidance", "1", *below], ["--guidance", "1", "--guidance-2", "1"], wan):
        _dry_run("--gpu-memory", "24", *flags)
    assert planned == [True, False, True, False, True]


def test_dry_run_human_output_names_the_choice():
    result = runner.invoke(
        app, ["edit", "--dry-run", "--model", f"{CONFIGS}/wan2.2-ti2v-5b", "--size", "832x480", "--gpu-memory", "80"]
    )
    assert result.exit_code == 0, result.output
    assert "Chosen" in result.stdout and "fits" in result.stdout and "Option sets tried" in result.stdout


def test_the_plan_refuses_a_size_off_the_stride_and_unknown_options():
    spec = _spec("wan2.1-t2v-1.3b")
    with pytest.raises(UsageError, match="multiples of 16"):
        plan_edit(spec, EditShape(830, 480, 81), MemoryOptions())
    with pytest.raises(UsageError, match="--source-cache"):
        choose(spec, EditShape(832, 480, 81), {"source_cache": "disk"}, 24)


def test_windows_share_nothing_but_the_device_cache():
    """Three windows: the device cache holds all three for the whole denoise, the host cache two blocks."""
    spec = _spec("wan2.1-t2v-1.3b")
    one, three = EditShape(832, 480, 81), EditShape(832, 480, 161)
    device = plan_edit(spec, three, MemoryOptions()).components["source_cache"]
    assert device == pytest.approx(3 * plan_edit(spec, one, MemoryOptions()).components["source_cache"], rel=0.01)
    cpu = MemoryOptions(source_cache="cpu")
    assert (
        plan_edit(spec, three, cpu).components["source_cache"] == plan_edit(spec, one, cpu).components["source_cache"]
    )
