"""Pretrain the toy base's text encoder on the simple world's language, then freeze it (`pretrain --stage text`).

A real Wan's UMT5 arrives knowing what "make the circle red" means. A tiny one trained beside the transformer on
captions only learns the words captions use, and an instruction reaches the adapter as words the encoder never
related to anything. This stage trains the encoder alone, before the transformer, on captions *and*
instructions: small linear heads on its pooled output read off what the text says the scene looks like (for a
caption, the scene; for an instruction, the attributes of the edited scene that the instruction fixes, so "make
the circle red" and "a red circle on ..." land near each other). The heads are then dropped and the encoder is
frozen for every later stage, as a real Wan's is.

`probe()` measures the result: linear probes on the frozen pooled features, trained on some instruction
phrasings and tested on phrasings that neither the encoder nor the probe saw (`held_out`), recover the
instruction's kind and the new attribute it names.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from ..models.wan import encode_text
from .runlog import cosine, log_record, optimizer_step
from .world import (
    EDIT_KINDS,
    GLOBAL_STYLES,
    PALETTE,
    SHAPES,
    SIMPLE_PLACES,
    Edit,
    Scene,
    caption,
    possible_kinds,
    sample_edit,
    sample_scene,
)

IGNORE = -100  # a head the text says nothing about (cross_entropy's ignore_index)
# What each head reads off a text: the (edited) scene's attributes, "none" where the scene has none
HEADS: dict[str, tuple[str, ...]] = {
    "kind": ("caption", *EDIT_KINDS),
    "color": ("none", *PALETTE),  # the object's colour
    "shape": ("none", *SHAPES),  # the object's shape
    "place": tuple(SIMPLE_PLACES),  # where "add" puts it
    "background": tuple(PALETTE),
    "background2": tuple(PALETTE),  # a gradient's far end; the same colour for a flat background
    "style": ("none", *GLOBAL_STYLES),
}
# The heads that carry the new attribute of each kind of instruction (what the probe must recover)
NEW_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "recolor": ("color",),
    "replace": ("shape",),
    "remove": ("shape",),  # "none": the edited scene has no object
    "add": ("color", "shape", "place"),
    "background": ("background",),
    "global": ("style",),
}


def held_out(text: str) -> bool:
    """A fifth of all phrasings, fixed by a hash of the text: never trained on, by the encoder or the probe."""
    return zlib.crc32(text.encode()) % 5 == 0


def caption_labels(scene: Scene) -> dict[str, str]:
    obj = scene.objects[0] if scene.objects else None
    bg = scene.background
    return {
        "kind": "caption",
        "color": obj.color if obj else "none",
        "shape": obj.shape if obj else "none",
        "background": bg.color,
        "background2": bg.color2,
        "style": scene.style or "none",
    }


def instruction_labels(edit: Edit) -> dict[str, str]:
    """The edited scene's attributes that the instruction alone fixes (the rest it leaves as they were)."""
    kind, target = edit.kind, edit.target
    labels = {"kind": kind}
    if kind in ("recolor", "replace", "add"):
        obj = target.objects[-1]
        labels.update(color=obj.color, shape=obj.shape)
        if kind == "replace":
            del labels["color"]  # "turn the circle into a square" keeps a colour it does not name
    if kind == "add":
        labels["place"] = next(p for p in SIMPLE_PLACES if edit.instruction.endswith(p))
    if kind == "remove":
        labels.update(color="none", shape="none")
    if kind == "background":
        labels.update(background=target.background.color, background2=target.background.color2)
    if kind == "global":
        labels["style"] = target.style
    return labels


def sample_text(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """A caption or an instruction of the simple world, half each, with its labels."""
    if rng.random() < 0.5:
        scene = sample_scene(rng, int(rng.random() < 0.9), world="simple")
        if rng.random() < 0.2:
            scene.style = GLOBAL_STYLES[rng.integers(len(GLOBAL_STYLES))]
        return caption(scene), caption_labels(scene)
    kind = EDIT_KINDS[rng.integers(len(EDIT_KINDS))]
    while True:
        scene = sample_scene(rng, 0 if kind == "add" else 1, world="simple")
        if kind in possible_kinds(scene):
            edit = sample_edit(scene, rng, kind)
            return edit.instruction, instruction_labels(edit)


def sample_texts(rng: np.random.Generator, n: int, held: bool | None = False, instructions_only: bool = False):
    """`n` texts with labels; `held`: only held-out phrasings (True), only the others (False), or any (None)."""
    texts, labels = [], []
    while len(texts) < n:
        text, label = sample_text(rng)
        if (held is None or held_out(text) == held) and not (instructions_only and label["kind"] == "caption"):
            texts.append(text)
            labels.append(label)
    return texts, labels


def _targets(labels: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    return {
        head: torch.tensor([classes.index(lab[head]) if head in lab else IGNORE for lab in labels])
        for head, classes in HEADS.items()
    }


def train_text_encoder(base, config: dict, log=None) -> dict:
    """Train `base.text_encoder` with the attribute heads, then freeze it; returns timings and the probe."""
    c = config["text_encoder"]["pretrain"]
    encoder, tokenizer = base.text_encoder, base.tokenizer
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(encoder.config.d_model, len(v)) for h, v in HEADS.items()})
    params = [*encoder.parameters(), *heads.parameters()]
    encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, c["steps"], 100))
    rng, start = np.random.default_rng(config["seed"] + 777), time.time()
    for step in range(c["steps"]):
        texts, labels = sample_texts(rng, c["batch_size"])
        _, pooled = encode_text(tokenizer, encoder, texts)
        targets = _targets(labels)
        losses = {h: F.cross_entropy(heads[h](pooled), targets[h], ignore_index=IGNORE) for h in HEADS}
        loss = sum(v for v in losses.values() if not v.isnan())  # a batch may hold no text for a head
        optimizer_step(loss, opt, sched, params)
        if step % 100 == 0 or step == c["steps"] - 1:
            log_record(
                log, {"stage": "text", "step": step, "loss": round(loss.item(), 4), "s": round(time.time() - start)}
            )
    encoder.eval().requires_grad_(False)
    n_train, n_test = c.get("probe_texts", (4000, 2000))
    report = {"text_seconds": round(time.time() - start, 1), "text_probe": probe(base, config["seed"], n_train, n_test)}
    log_record(log, {"stage": "text", **report["text_probe"]})
    return report


@torch.no_grad()
def _features(base, texts: list[str]) -> torch.Tensor:
    return torch.cat(
        [encode_text(base.tokenizer, base.text_encoder, texts[i : i + 256])[1] for i in range(0, len(texts), 256)]
    )


def _fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 500) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (the probe; nothing deeper), from a seeded
    initialisation so that a probe is a function of the features alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y) + 1e-4 * probe.weight.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def probe(base, seed: int = 0, n_train: int = 4000, n_test: int = 2000) -> dict:
    """Linear probes on the frozen encoder's pooled features: accuracy on held-out instruction phrasings.

    One probe per head, trained on instructions whose phrasing the encoder trained on and tested on phrasings
    neither saw. `kind` is the instruction's kind; `new_attribute` the share of held-out instructions whose
    every new-attribute head (NEW_ATTRIBUTES) is right."""
    rng = np.random.default_rng(seed + 99_000)
    train_texts, train_labels = sample_texts(rng, n_train, held=False, instructions_only=True)
    test_texts, test_labels = sample_texts(rng, n_test, held=True, instructions_only=True)
    x_train, x_test = _features(base, train_texts), _features(base, test_texts)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = _targets(train_labels), _targets(test_labels)
    right, accuracy = {}, {}
    for head, classes in HEADS.items():
        seen = y_train[head] != IGNORE
        with torch.enable_grad():
            fitted = _fit_probe(x_train[seen], y_train[head][seen], len(classes))
        pred = fitted(x_test).argmax(1)
        right[head] = (pred == y_test[head]) | (y_test[head] == IGNORE)
        scored = y_test[head] != IGNORE
        accuracy[head] = round(right[head][scored].float().mean().item(), 4)
    kinds = [lab["kind"] for lab in test_labels]
    new = [all(right[h][i] for h in NEW_ATTRIBUTES[k]) for i, k in enumerate(kinds)]
    return {
        "kind": accuracy["kind"],
        "new_attribute": round(float(np.mean(new)), 4),
        "per_head": accuracy,
        "held_out_instructions": len(test_texts),
        "distinct_held_out": len(set(test_texts)),
    }
