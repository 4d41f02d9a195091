"""The simple world (imvedit/toy/world.py): one large object per scene, edits whose free words are the new attribute."""

import copy
import re
from dataclasses import fields

import numpy as np
import pytest

from imvedit.toy.world import (
    EDIT_KINDS,
    GLOBAL_STYLES,
    LOCAL_KINDS,
    PALETTE,
    SIMPLE_PLACES,
    SIMPLE_SHAPES,
    Background,
    Obj,
    Scene,
    caption,
    possible_kinds,
    render,
    render_edit,
    sample_edit,
    sample_example,
    sample_scene,
    vocabulary,
)

SIZE = 64


def _coverage(obj: Obj, frames: int = 9) -> np.ndarray:
    """Per frame, the share of the canvas the object covers, from its pixels' colour on a flat background
    (antialiased pixels count by how much of the object's colour they hold)."""
    bg = "black" if obj.color == "white" else "white"
    video = render(Scene(Background("flat", bg, bg), [obj], world="simple"), frames, SIZE).astype(float)
    c_bg, c_obj = np.array(PALETTE[bg], float), np.array(PALETTE[obj.color], float)
    share = ((video - c_bg) @ (c_obj - c_bg)) / ((c_obj - c_bg) @ (c_obj - c_bg))
    return share.clip(0, 1).mean(axis=(1, 2))


def test_every_object_covers_15_to_30_percent_in_every_frame():
    for seed in range(40):
        scene = sample_scene(np.random.default_rng(seed), world="simple")
        assert scene.world == "simple" and len(scene.objects) == 1
        assert scene.background.kind in ("flat", "gradient") and scene.objects[0].shape in SIMPLE_SHAPES
        (obj,) = scene.objects
        for shape in SIMPLE_SHAPES:  # a replaced shape keeps the box, so every shape must be in range
            area = _coverage(Obj(shape, obj.color, obj.x, obj.y, obj.vx, obj.vy, obj.size))
            assert ((area >= 0.15) & (area <= 0.30)).all(), (shape, obj.size, area.min(), area.max())
            assert np.allclose(area, area[0], atol=0.01)  # never clipped by the border as it moves
    for edit in (
        sample_edit(sample_scene(np.random.default_rng(s), 0, "simple"), np.random.default_rng(s), "add")
        for s in range(10)
    ):
        assert ((a := _coverage(edit.target.objects[0])) >= 0.15).all() and (a <= 0.30).all()


def test_objects_move_and_bounce():
    moved = 0
    for seed in range(10):
        ex = sample_example(seed, frames=17, size=SIZE, kinds=("recolor",), world="simple")
        assert ex.source.shape == (17, SIZE, SIZE, 3)
        moved += not np.array_equal(ex.source[0], ex.source[-1])
    assert moved == 10


def test_same_seed_is_byte_identical_and_seeds_differ():
    a, b = (sample_example(11, frames=5, size=32, world="simple") for _ in range(2))
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.tobytes() == y.tobytes() if isinstance(x, np.ndarray) else x == y
    sources = [sample_example(s, frames=5, size=32, world="simple").source.tobytes() for s in range(8)]
    assert len(set(sources)) == len(sources)
    assert sample_example(11, frames=5, size=32, world="hard").source.tobytes() != a.source.tobytes()


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_ground_truth_and_mask_of_every_kind(kind):
    for seed in range(8):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, 0 if kind == "add" else 1, "simple")
        edit = sample_edit(scene, rng, kind)
        ex = render_edit(edit, frames=9, size=48)
        src, tgt = edit.source, edit.target
        words = edit.instruction.split()
        assert np.array_equal(ex.mask, (ex.target != ex.source).any(-1)) and ex.mask.any(axis=(1, 2)).all()
        assert ex.target_caption == caption(tgt) and ex.source_caption == caption(src)
        if kind in LOCAL_KINDS:
            assert not ex.mask.all(axis=(1, 2)).any()  # never the whole canvas
        if kind == "recolor":
            (a,), (b,) = src.objects, tgt.objects
            assert b.color != a.color and b.color in words and a.color not in words and a.shape in words
            assert (b.shape, b.x, b.y, b.vx, b.vy, b.size) == (a.shape, a.x, a.y, a.vx, a.vy, a.size)
            # the changed pixels are the object's footprint, frame by frame
            footprint = (render(src, 9, 48) != render(Scene(src.background, [], world="simple"), 9, 48)).any(-1)
            assert not (ex.mask & ~footprint).any() and ex.mask.sum() > 0.9 * footprint.sum()
        elif kind == "replace":
            (a,), (b,) = src.objects, tgt.objects
            assert b.shape != a.shape and words[-1] == b.shape and a.color not in words
            assert (b.color, b.x, b.y, b.vx, b.vy, b.size) == (a.color, a.x, a.y, a.vx, a.vy, a.size)
        elif kind == "remove":
            assert tgt.objects == [] and words[-1] == src.objects[0].shape
            background = render(Scene(src.background, [], world="simple"), 9, 48)
            assert np.array_equal(ex.target, background)
            assert ex.target_caption == caption(src).split(" on ", 1)[1]  # "a green background"
        elif kind == "add":
            assert src.objects == [] and ex.source_caption.endswith("background") and " on " not in ex.source_caption
            (b,) = tgt.objects
            assert f"{b.color} {b.shape}" in edit.instruction and b.color not in (
                src.background.color,
                src.background.color2,
            )
            assert (b.vx, b.vy) == (0.0, 0.0)  # placed, unmoving: every frame the same
            assert all(np.array_equal(ex.target[0], f) for f in ex.target)
        elif kind == "background":
            assert tgt.background.kind == "flat" and tgt.background.color == words[-1] and tgt.objects == src.objects
            assert words[-1] not in (src.background.color, src.background.color2, src.objects[0].color)
        else:
            assert tgt.style in GLOBAL_STYLES and tgt.objects == src.objects
            if tgt.style == "black and white":  # grey pixels stay as they were; every pixel ends grey
                assert (ex.target == ex.target[..., :1]).all()
            else:
                assert ex.mask.mean() > 0.5


def test_add_places_the_object_where_the_instruction_says():
    spots: dict[str, set] = {p: set() for p in SIMPLE_PLACES}
    for seed in range(80):
        rng = np.random.default_rng(seed)
        edit = sample_edit(sample_scene(rng, 0, "simple"), rng, "add")
        (place,) = [p for p in SIMPLE_PLACES if edit.instruction.endswith(p)]
        (obj,) = edit.target.objects
        spots[place].add((obj.x, obj.y, obj.size))
        fx, fy = SIMPLE_PLACES[place]
        mask = render_edit(edit, frames=1, size=SIZE).mask[0]
        ys, xs = np.nonzero(mask)
        # the object's box touches the borders the place names (a square fills 85 % of its box: 3 px short)
        assert (xs.min() <= 3) == (fx == 0) and (xs.max() >= SIZE - 4) == (fx == 1)
        assert (ys.min() <= 3) == (fy == 0) and (ys.max() >= SIZE - 4) == (fy == 1)
        if fx == 0.5:
            assert abs((xs.mean() + 0.5) / SIZE - 0.5) < 0.02
    # one place, one spot and size, whatever the seed drew before: the instruction says all of it
    assert all(len(v) == 1 for v in spots.values()), spots


def test_kinds_on_one_object_and_on_an_empty_scene():
    one = sample_scene(np.random.default_rng(0), world="simple")
    empty = sample_scene(np.random.default_rng(0), 0, "simple")
    assert possible_kinds(one) == [k for k in EDIT_KINDS if k != "add"]
    assert "add" in possible_kinds(empty) and not {"recolor", "replace", "remove"} & set(possible_kinds(empty))
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), 2, "simple")
    with pytest.raises(ValueError):
        sample_example(0, world="medium")


def test_instructions_name_only_the_shape_and_the_new_attribute():
    vocab = set(vocabulary("simple"))
    assert {"top", "left", "right", "bottom", "center"} <= vocab and "star" in vocab
    assert "top" not in vocabulary("hard")  # the hard world's vocabulary, and its tokenizer, are unchanged
    seen = set()
    for seed in range(120):
        ex = sample_example(seed, frames=1, size=32, world="simple")
        seen.add(ex.kind)
        for text in (ex.instruction, ex.source_caption, ex.target_caption):
            assert set(re.findall(r"[a-z]+", text)) <= vocab
        shapes = [w for w in ex.instruction.split() if w in SIMPLE_SHAPES]
        colors = [w for w in ex.instruction.split() if w in PALETTE and ex.kind != "global"]
        assert len(shapes) <= 2 and len(colors) <= 1  # no referring expressions: "the circle", never "the blue circle"
        if ex.kind in ("recolor", "remove", "replace", "background"):
            assert not re.search(r"the \w+ (circle|square|triangle)", ex.instruction)
    assert seen == set(EDIT_KINDS)


def test_read_edit_reads_each_default_edit_off_the_rendered_ground_truth():
    """The default edits' checks (tests/benchmarks/bench_default_edit.py) read the right answer off exact
    renders of each edit, and the opposite off the unedited clip."""
    from imvedit.toy.reading import read_edit

    scene = Scene(
        Background("flat", "green", "green"), [Obj("circle", "blue", 0.4, 0.45, 0.02, 0.01, 0.58)], world="simple"
    )
    source = render(scene, 9, SIZE)

    def edited(**change) -> np.ndarray:
        target = copy.deepcopy(scene)
        if "color" in change:
            target.objects[0].color = change["color"]
        if change.get("remove"):
            target.objects = []
        if "background" in change:
            target.background = Background("flat", change["background"], change["background"])
        target.style = change.get("style")
        return render(target, 9, SIZE)

    same = read_edit(source, source, scene)
    assert same["object_to_color"] == same["object_to_background"] == same["background_to"] == 0.0
    assert same["object_kept"] == 1.0 and same["rest_psnr"] == float("inf") and same["max_saturation"] > 0.5
    assert read_edit(source, edited(color="red"), scene)["object_to_color"] == 1.0
    assert read_edit(source, edited(remove=True), scene)["object_to_background"] == 1.0
    pink = read_edit(source, edited(background="pink"), scene)
    assert pink["background_to"] == 1.0 and pink["object_kept"] == 1.0 and pink["rest_psnr"] < 15
    assert read_edit(source, edited(style="black and white"), scene)["max_saturation"] <= 0.1
