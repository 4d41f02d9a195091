"""The hard shapes world (1-3 small objects), named explicitly: the default world is the bundled base's, and
the simple world has its own tests (test_world_simple.py)."""

import re
from dataclasses import fields

import numpy as np
import pytest

from imvedit.toy.world import (
    EDIT_KINDS,
    GLOBAL_STYLES,
    LOCAL_KINDS,
    PALETTE,
    SHAPES,
    Background,
    Obj,
    Scene,
    caption,
    positions,
    render,
    render_edit,
    render_frame,
    sample_edit,
    sample_example,
    sample_scene,
    vocabulary,
)


def _edits(n):
    """n (scene, edit) pairs cycling through every kind, without rendering (cheap)."""
    out, seed = [], 0
    while len(out) < n:
        rng = np.random.default_rng(seed)
        kind = EDIT_KINDS[seed % len(EDIT_KINDS)]
        scene = sample_scene(rng, world="hard")
        seed += 1
        try:
            out.append(sample_edit(scene, rng, kind))
        except ValueError:
            continue
    return out


def test_same_seed_is_byte_identical_and_seeds_differ():
    a, b = sample_example(11, frames=5, size=32, world="hard"), sample_example(11, frames=5, size=32, world="hard")
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        else:
            assert x == y
    sources = [sample_example(s, frames=5, size=32, world="hard").source.tobytes() for s in range(8)]
    assert len(set(sources)) == len(sources)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_mask_is_exact_and_nonempty(kind):
    for seed in range(6):
        ex = sample_example(seed, frames=9, size=48, kinds=(kind,), world="hard")
        assert ex.kind == kind
        assert ex.mask.dtype == bool and ex.mask.shape == ex.source.shape[:3]
        assert np.array_equal(ex.mask, (ex.target != ex.source).any(-1))
        assert ex.mask.any()
        if kind in LOCAL_KINDS:
            assert not ex.mask.reshape(len(ex.mask), -1).all(axis=1).any()  # never the whole canvas
            assert ex.mask[0].any()  # objects start apart, so the edited one is visible in frame 0
            if kind == "add":  # the added object is drawn on top, so it is visible in every frame
                assert ex.mask.reshape(len(ex.mask), -1).any(axis=1).all()
        else:
            assert ex.mask.mean() > 0.5


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_kind_renders_at_every_size(kind):
    for frames in (1, 17):
        for size in (32, 64, 96):
            ex = sample_example(100 + size, frames=frames, size=size, kinds=(kind,), world="hard")
            assert ex.source.shape == ex.target.shape == (frames, size, size, 3)
            assert ex.source.dtype == ex.target.dtype == np.uint8
            assert ex.mask.shape == (frames, size, size)


def test_impossible_kind_raises_and_source_is_untouched():
    rng = np.random.default_rng(0)
    one = sample_scene(rng, n_objects=1, world="hard")
    with pytest.raises(ValueError):
        sample_edit(one, rng, "remove")
    three = sample_scene(rng, n_objects=3, world="hard")
    with pytest.raises(ValueError):
        sample_edit(three, rng, "add")
    before = repr(one)
    for _ in range(20):
        assert sample_edit(one, rng).kind != "remove"
    assert repr(one) == before


def test_motion_follows_velocity_and_bounces_inside_canvas():
    size, r = 64, 0.1
    obj = Obj("circle", "red", 0.3, 0.6, 0.03, -0.025, 2 * r)
    scene = Scene(Background("flat", "blue", "blue"), [obj])
    video = render(scene, frames=60, size=size)
    bg = np.array(PALETTE["blue"])
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    centroids, areas = [], []
    for t, frame in enumerate(video):
        w = np.abs(frame.astype(float) - bg).sum(-1)
        w /= w.max()
        centroids.append(((w * xs).sum() / w.sum() / size, (w * ys).sum() / w.sum() / size))
        areas.append(w.sum())
        cx, cy = positions(obj, t)
        assert r - 1e-9 <= cx <= 1 - r + 1e-9 and r - 1e-9 <= cy <= 1 - r + 1e-9
        assert abs(centroids[-1][0] - cx) < 0.5 / size and abs(centroids[-1][1] - cy) < 0.5 / size
    centroids = np.array(centroids)
    assert np.allclose(areas, areas[0], rtol=0.05)  # never clipped by the border
    steps = np.abs(np.diff(centroids, axis=0))
    free = (steps[:, 0] > 0.02) & (steps[:, 1] > 0.015)  # frames without a reflection
    assert free.mean() > 0.7
    assert np.allclose(steps[free], [0.03, 0.025], atol=0.3 / size)
    vx = np.sign(np.diff(centroids[:, 0]))
    vy = np.sign(np.diff(centroids[:, 1]))
    assert (vx > 0).any() and (vx < 0).any() and (vy > 0).any() and (vy < 0).any()  # it did bounce


def test_recolor_changes_only_where_the_object_is():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, world="hard")
        edit = sample_edit(scene, rng, "recolor")
        (i,) = [
            i
            for i, (a, b) in enumerate(zip(edit.source.objects, edit.target.objects, strict=True))
            if a.color != b.color
        ]
        ex = render_edit(edit, frames=9, size=48)
        alone = Scene(scene.background, [scene.objects[i]], world=scene.world)
        footprint = (render(alone, 9, 48) != render(Scene(scene.background, [], world=scene.world), 9, 48)).any(-1)
        assert ex.mask.any()
        assert not (ex.mask & ~footprint).any()  # per frame, changes lie on the object's source position


def test_persisting_objects_keep_their_motion():
    for edit in _edits(60):
        src, tgt = edit.source.objects, edit.target.objects
        keep = [o for o in src if edit.kind != "remove" or o in tgt]
        motion = [(o.x, o.y, o.vx, o.vy, o.size) for o in tgt]
        for o in keep:
            assert (o.x, o.y, o.vx, o.vy, o.size) in motion
        if edit.kind == "add":
            assert len(tgt) == len(src) + 1 and tgt[:-1] == src
        if edit.kind == "global":
            assert edit.target.style in GLOBAL_STYLES and edit.target.objects == src


def test_vocabulary_covers_every_caption_and_instruction():
    vocab = vocabulary("hard")
    assert vocab == sorted(set(vocab)) and all(re.fullmatch(r"[a-z]+", w) for w in vocab)
    assert set(PALETTE) <= set(vocab) and set(SHAPES) <= set(vocab)
    words, kinds = set(), set()
    for edit in _edits(200):
        kinds.add(edit.kind)
        for text in (edit.instruction, caption(edit.source), caption(edit.target)):
            words |= set(re.findall(r"[a-z]+", text))
            assert text == text.lower() and not re.search(r"[^a-z ,]", text)
    assert kinds == set(EDIT_KINDS)
    assert words <= set(vocab)


def test_captions_describe_objects_background_and_style():
    for seed in range(30):
        scene = sample_scene(np.random.default_rng(seed), world="hard")
        text = caption(scene)
        for o in scene.objects:
            assert f"{o.color} {o.shape}" in text
        assert scene.background.color in text and text.endswith("background")
    scene.style = "night"
    assert caption(scene).endswith(", at night")
    scene.style = "black and white"
    assert caption(scene).endswith(", in black and white")


def test_black_and_white_is_grey_and_frames_match_the_video():
    scene = sample_scene(np.random.default_rng(3), world="hard")
    scene.style = "black and white"
    frame = render_frame(scene, 4, 40)
    assert frame.dtype == np.uint8 and (frame[..., 0] == frame[..., 1]).all() and (frame[..., 1] == frame[..., 2]).all()
    assert np.array_equal(render(scene, 5, 40)[4], frame)


def test_hard_world_draws_the_scenes_it_always_drew():
    """The bundled base and its bench numbers were made on these scenes: adding worlds must not move them.
    A digest of the scene parameters and texts of 60 seeded edits, recorded before the simple world existed."""
    import hashlib

    digest = hashlib.sha256()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        edit = sample_edit(sample_scene(rng, world="hard"), rng, None)
        for s in (edit.source, edit.target):
            bg, objs = s.background, [(o.shape, o.color, o.x, o.y, o.vx, o.vy, o.size) for o in s.objects]
            digest.update(repr((edit.kind, edit.instruction, bg.kind, bg.color, bg.color2, s.style, objs)).encode())
    assert digest.hexdigest() == "462c6bb0e67ed079e88165344674d5f6020f2d5b061203060b4f6acfa7539b23"
