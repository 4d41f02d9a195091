"""A VLM judge through an OpenAI-compatible chat endpoint (a local vLLM or llama.cpp server, or a hosted
one): instruction adherence, temporal consistency, visual fidelity and aesthetics, 1-10, as the
ImVideoEdit paper's IA/TC/VF/AA and EditVerseBench's judges score edits.

The prompt is versioned in `prompts/judge_v<N>.txt`; every score carries the judge's identity
(endpoint, model, prompt version). The network is only used for the URL the user gives.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT_VERSION = "1"
PROMPT = (Path(__file__).parent / "prompts" / f"judge_v{PROMPT_VERSION}.txt").read_text(encoding="utf-8")
CRITERIA = ("instruction_adherence", "temporal_consistency", "visual_fidelity", "aesthetics")


class JudgeError(Exception):
    """The judge gave no usable answer: the clip's judge scores are skipped with this reason."""


@dataclass
class Judge:
    url: str  # the endpoint's base URL, e.g. http://localhost:8000/v1
    model: str  # the model name the endpoint serves
    frames: int = 4  # frames sampled from each of source and edit
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key, if the endpoint needs one
    timeout: float = 120.0  # seconds per request

    @property
    def identity(self) -> dict:
        return {"url": self.url, "model": self.model, "prompt_version": PROMPT_VERSION, "frames": self.frames}

    def score(self, edited: np.ndarray, source: np.ndarray, instruction: str) -> dict:
        idx = np.unique(np.linspace(0, len(edited) - 1, min(self.frames, len(edited))).round().astype(int))
        images = [_data_url(source[i]) for i in idx] + [_data_url(edited[i]) for i in idx]
        content = [{"type": "text", "text": PROMPT.format(n=len(idx), instruction=instruction)}]
        content += [{"type": "image_url", "image_url": {"url": u}} for u in images]
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(  # noqa: S310 - the URL is the user's own endpoint, http(s) only
            self.url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        if not self.url.startswith(("http://", "https://")):
            raise JudgeError(f"judge URL {self.url!r} is not http(s)")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                reply = json.loads(response.read().decode())
            text = reply["choices"][0]["message"]["content"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"the judge at {self.url} gave no answer ({type(e).__name__}: {e})") from e
        return parse_scores(text)


def parse_scores(text: str) -> dict:
    """The four 1-10 scores from the judge's answer (the first JSON object in it)."""
    match = re.search(r"\{.*?\}", text, re.DOTALL)
    if not match:
        raise JudgeError(f"the judge's answer holds no JSON object: {text[:80]!r}")
    try:
        data = json.loads(match.group(0))
        scores = {f"judge_{k}": float(data[k]) for k in CRITERIA}
    except (ValueError, KeyError, TypeError) as e:
        raise JudgeError(f"the judge's answer lacks a score ({e}): {text[:80]!r}") from e
    if not all(1 <= v <= 10 for v in scores.values()):
        raise JudgeError(f"the judge's scores are outside 1-10: {scores}")
    return scores


def _data_url(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
