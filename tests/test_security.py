"""Security rules of the code base, checked on its syntax tree, and the hostile inputs they protect from.

Rules: weights only from safetensors (`torch.load` only with `weights_only=True`, never pickle); YAML only
through safe loading; no `trust_remote_code=True`; no shell strings (`shell=True`, `os.system`, `os.popen`).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import imvedit

PACKAGE = Path(imvedit.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "dill", "marshal", "shelve") for n in names):
                found.append(f"{path.name}:{node.lineno} imports a pickle-like module")
    for call, name in _calls(tree):
        kw = {k.arg: k.value for k in call.keywords}
        where = f"{path.name}:{call.lineno} {name}"
        if name.endswith("torch.load"):
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                found.append(f"{where} without weights_only=True")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            found.append(f"{where}: use yaml.safe_load")
        if "trust_remote_code" in kw and not (
            isinstance(kw["trust_remote_code"], ast.Constant) and kw["trust_remote_code"].value is False
        ):
            found.append(f"{where} with trust_remote_code")
        if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
            found.append(f"{where} with shell=")
        if name in ("os.system", "os.popen", "eval", "exec"):
            found.append(f"{where}")
    return found


def test_the_rules_hold_in_every_module():
    assert len(SOURCES) > 20  # the scan really reads the package
    problems = [v for path in SOURCES for v in _violations(path)]
    assert problems == []


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("import torch\ntorch.load('x')", "without weights_only=True"),
        ("import torch\ntorch.load('x', weights_only=False)", "without weights_only=True"),
        ("import yaml\nyaml.load(open('x'))", "use yaml.safe_load"),
        ("import subprocess\nsubprocess.run('ls', shell=True)", "with shell="),
        ("from diffusers import DiffusionPipeline\nDiffusionPipeline.from_pretrained('x', trust_remote_code=True)", "trust_remote_code"),
        ("import pickle", "pickle-like"),
        ("import os\nos.system('ls')", "os.system"),
    ],
)  # fmt: skip
def test_the_scan_catches_each_rule(tmp_path, snippet, expected):
    bad = tmp_path / "bad.py"
    bad.write_text(snippet)
    (problem,) = _violations(bad)
    assert expected in problem


def test_a_yaml_config_with_a_python_tag_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "run.yaml"
    config.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    (tmp_path / "pairs").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "imvedit", "train", str(tmp_path / "pairs"), "-o", str(tmp_path / "run"), "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
