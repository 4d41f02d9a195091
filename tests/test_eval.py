"""`imvedit eval --pred --source` on real footage metrics: tiny random CLIP and DINOv2 models built from
transformers configs exercise every learned metric's code path; known inputs pin the model-free ones."""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.evaluation.learned import MetricModels, warp_errors
from imvedit.toy.world import render, sample_scene
from imvedit.video.io import write_video

runner = CliRunner()
WORDS = ["[PAD]", "[UNK]", "[EOS]", "make", "it", "red", "winter", "a", "circle"]


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    """A CLIP (tokenizer + image processor) and a DINOv2 folder, tiny and random, as from_pretrained reads them."""
    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    clip_cfg = CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=2, pad_token_id=0, bos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(clip_cfg).save_pretrained(root / "clip")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    ).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    dino_cfg = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
    )
    Dinov2Model(dino_cfg).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root


def clip_of(seed, frames=6, size=32):
    return render(sample_scene(np.random.default_rng(seed)), frames=frames, size=size)


def test_every_learned_metric_is_computed_with_tiny_models(metric_models):
    m = MetricModels.load(str(metric_models / "clip"), str(metric_models / "dino"))
    assert set(m.skipped) == {"judge"} and set(m.names) == {"clip", "dino"}
    video = clip_of(0)
    scores = m.score(video, video, "make it red")
    assert set(scores) == {"clip_t", "clip_f", "dino_f", "warp_error", "warp_error_raw"}
    assert -100 <= scores["clip_t"] <= 100 and -1 <= scores["clip_f"] <= 1.0001 and -1 <= scores["dino_f"] <= 1.0001
    static = np.repeat(video[:1], 6, axis=0)
    still = m.score(static, static, "make it red")
    assert still["clip_f"] == pytest.approx(1.0, abs=1e-5) and still["dino_f"] == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(1).integers(0, 255, video.shape, dtype=np.uint8)
    assert m.score(noise, video, "make it red")["clip_f"] < still["clip_f"]  # the metric can fall
    other = m.score(video, video, "a circle")["clip_t"]
    assert other != scores["clip_t"]  # the text matters


def test_model_free_metrics_on_known_inputs():
    video = clip_of(2, frames=8)
    assert warp_errors(video, video)[0] == 0.0  # an exact copy: zero beyond the source
    static = np.repeat(video[:1], 8, axis=0)
    # nothing moves: nothing to warp (Farneback's flow on a still frame is zero up to float noise, ~1e-6 on
    # a large flat shape)
    assert warp_errors(static, static) == pytest.approx((0.0, 0.0), abs=1e-5)
    flickering = video.copy()
    flickering[1::2] = 255 - flickering[1::2]
    assert warp_errors(flickering, video)[0] > 0.2


def test_missing_weights_are_skipped_with_the_reason_and_the_run_succeeds(tmp_path):
    src = write_video(tmp_path / "s.mp4", clip_of(3), 8)
    r = runner.invoke(
        app, ["eval", "--pred", str(src), "--source", str(src), "--clip", "nobody/no-such-clip", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "could not be loaded" in out["skipped"]["clip_t"] and "no DINOv2 model given" in out["skipped"]["dino_f"]
    assert "clip_t" not in out["overall"] and out["overall"]["psnr_vs_source"] is None  # +inf, as null
    assert out["overall"]["warp_error"] == 0.0 and out["overall"]["flicker"] > 0


def test_folders_of_edits_from_any_tool_are_scored(tmp_path, metric_models):
    (tmp_path / "src").mkdir()
    (tmp_path / "pred").mkdir()
    for i in range(3):
        v = clip_of(10 + i)
        write_video(tmp_path / "src" / f"c{i}.mp4", v, 8)
        write_video(tmp_path / "pred" / f"c{i}.mp4", 255 - v, 8)  # "edits": inverted
    (tmp_path / "prompts.yaml").write_text("c0.mp4: make it red\nc1.mp4: make it winter\n")
    r = runner.invoke(
        app,
        ["eval", "--pred", str(tmp_path / "pred"), "--source", str(tmp_path / "src"), "--prompts", str(tmp_path / "prompts.yaml"),
         "--clip", str(metric_models / "clip"), "--dino", str(metric_models / "dino"), "--report", str(tmp_path / "rep"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["clips"] == 3 and [row["prompt"] for row in out["per_clip"]] == ["make it red", "make it winter", None]
    assert all("clip_t" in row for row in out["per_clip"][:2]) and "clip_t" not in out["per_clip"][2]
    assert out["overall"]["psnr_vs_source"] < 10 and out["metrics_version"] == "1"
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["clips"] == 3
    (tmp_path / "pred" / "extra.mp4").write_bytes((tmp_path / "pred" / "c0.mp4").read_bytes())
    r = runner.invoke(app, ["eval", "--pred", str(tmp_path / "pred"), "--source", str(tmp_path / "src")])
    assert r.exit_code == 2 and "no source of the same name" in r.stderr


def test_manifest_edits_scores_reports_and_two_adapters_compare(tmp_path):
    from conftest import randomize_adapter

    from imvedit.models.adapter_file import save_adapter
    from imvedit.models.bases import build_tiny_random
    from imvedit.models.imvedit import ImVideoEditAdapter

    base = build_tiny_random()
    adapters = []
    for seed in (1, 2):  # two different adapters of the same base
        a = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, rank=2), seed=seed)
        adapters.append(save_adapter(a, tmp_path / f"a{seed}.safetensors", base.identity))
    for i in range(2):
        write_video(tmp_path / f"s{i}.mp4", clip_of(20 + i, frames=5), 8)
    mask = np.zeros((5, 32, 32, 3), np.uint8)
    mask[:, 8:24, 8:24] = 255
    write_video(tmp_path / "m0.mp4", mask, 8)
    manifest = tmp_path / "bench.yaml"
    manifest.write_text(
        "- {source: s0.mp4, instruction: make it red, mask: m0.mp4}\n- {source: s1.mp4, instruction: make it winter, caption: a winter scene}\n"
    )

    def args(report, adapter):
        return ["eval", "--manifest", str(manifest), "--report", str(report), "--model", "tiny-random",
                "--adapter", str(adapter), "--steps", "2", "--json"]  # fmt: skip

    reports = []
    for i, adapter in enumerate(adapters):
        report = tmp_path / f"run{i}"
        r = runner.invoke(app, args(report, adapter))
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["clips"] == 2 and out["failed"] == 0 and "preserve_psnr" in out["per_clip"][0]
        assert "preserve_psnr" not in out["per_clip"][1] and out["per_clip"][1]["prompt"] == "a winter scene"
        page = (report / "index.html").read_text()
        assert page.count("<video") == 4 and page.count("strips/clip-") == 2
        assert (
            len(list((report / "strips").glob("*.png"))) == 2 and len(list((report / "edits").glob("*.gate.mp4"))) == 2
        )
        reports.append(report)
    stamps = {p: p.stat().st_mtime_ns for p in (reports[0] / "edits").iterdir()}
    assert runner.invoke(app, args(reports[0], adapters[0])).exit_code == 0  # resumable: nothing redone
    assert {p: p.stat().st_mtime_ns for p in (reports[0] / "edits").iterdir()} == stamps
    r = runner.invoke(
        app,
        [
            "eval",
            "--compare",
            str(reports[0]),
            "--compare",
            str(reports[1]),
            "--report",
            str(tmp_path / "cmp"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    a, b = (out["table"]["psnr_vs_source"][str(x)] for x in reports)
    assert a != b  # two adapters, two different edits
    from PIL import Image

    with Image.open(tmp_path / "cmp" / "compare.png") as im:
        assert im.width > 200 and np.asarray(im).std() > 5
    assert "| psnr_vs_source |" in (tmp_path / "cmp" / "compare.md").read_text()


class _JudgeServer:
    """A local OpenAI-compatible endpoint answering with a fixed reply; it records what it was sent."""

    def __init__(self, reply_text):
        import http.server
        import threading

        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                seen.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply_text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_vlm_judge_through_an_openai_compatible_endpoint(tmp_path):
    src = write_video(tmp_path / "s.mp4", clip_of(4), 8)
    prompts = tmp_path / "p.yaml"
    prompts.write_text("s.mp4: make the circle red\n")
    server = _JudgeServer(
        'Scores: {"instruction_adherence": 7, "temporal_consistency": 9, "visual_fidelity": 8, "aesthetics": 6}'
    )
    try:
        r = runner.invoke(app, ["eval", "--pred", str(src), "--source", str(src), "--prompts", str(prompts), "--judge-url", server.url,
                                "--judge-model", "qwen2.5-vl-7b", "--json"])  # fmt: skip
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    row = out["per_clip"][0]
    assert row["judge_instruction_adherence"] == 7 and row["judge_aesthetics"] == 6
    assert out["metric_models"]["judge"] == {
        "url": server.url,
        "model": "qwen2.5-vl-7b",
        "prompt_version": "1",
        "frames": 4,
    }
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "qwen2.5-vl-7b"
    images = [c for c in body["messages"][0]["content"] if c["type"] == "image_url"]
    assert len(images) == 8 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")  # 4 + 4 frames
    assert "make the circle red" in body["messages"][0]["content"][0]["text"]
    bad = _JudgeServer("I cannot judge this.")
    try:
        r = runner.invoke(app, ["eval", "--pred", str(src), "--source", str(src), "--prompts", str(prompts), "--judge-url", bad.url,
                                "--judge-model", "m", "--json"])  # fmt: skip
    finally:
        bad.close()
    row = json.loads(r.stdout.strip().splitlines()[-1])["per_clip"][0]
    assert r.exit_code == 0 and "no JSON object" in row["judge_error"] and "judge_aesthetics" not in row
