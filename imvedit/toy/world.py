"""A deterministic "shapes world": videos of moving coloured shapes, their captions, and edits with exact ground truth.

Every edit is rendered twice from scene descriptions that share their motion, so the edited video, the changed-pixel
mask and both captions are known exactly. Geometry is in normalised canvas units, so any pixel size renders the same
world. Only numpy is needed.

Two worlds share the renderer and the language (WORLDS):

- `hard`: 1-3 small objects (13-22 px at 64 px) of five shapes on flat, gradient or striped backgrounds; an
  instruction must say which object it means ("paint the blue star green"). The bundled `shapes-wan` was
  trained on it, and it stays the default until a base trained on `simple` ships.
- `simple`: one large object per scene (15-30 % of the frame: 35-40 px across at 64 px, four to five 8-px
  tokens) of three shapes that stay distinct at that size, on flat or gradient backgrounds. An instruction's
  free words are only the new attribute ("make the circle red", "turn the circle into a square"); "add" starts
  from an empty background and says where the object goes ("add a red square at the top left"), which places
  it, unmoving, at a fixed spot of a fixed size, so its ground truth follows from the instruction alone.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "cyan": (40, 200, 220),
    "pink": (245, 130, 180),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
WORLDS: tuple[str, ...] = ("hard", "simple")
DEFAULT_WORLD = "simple"  # what the bundled shapes-wan was trained on; `hard` is the earlier, many-object world
SIMPLE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIMPLE_BACKGROUND_KINDS: tuple[str, ...] = ("flat", "gradient")
# Where "add" puts an object in the simple world: (x, y) as a fraction of the span its centre may take
SIMPLE_PLACES: dict[str, tuple[float, float]] = {
    "at the top left": (0.0, 0.0),
    "at the top right": (1.0, 0.0),
    "at the bottom left": (0.0, 1.0),
    "at the bottom right": (1.0, 1.0),
    "in the center": (0.5, 0.5),
}
EDIT_KINDS: tuple[str, ...] = ("recolor", "replace", "remove", "add", "background", "global")
LOCAL_KINDS: tuple[str, ...] = ("recolor", "replace", "remove", "add")
GLOBAL_STYLES: tuple[str, ...] = ("winter", "night", "black and white")
BACKGROUND_KINDS: tuple[str, ...] = ("flat", "gradient", "stripes")
MAX_OBJECTS = 3

# How a style is named in an instruction ("make it night") and in a caption ("at night").
_STYLE_NAMES = {"winter": "in winter", "night": "at night", "black and white": "in black and white"}
_BACKGROUND_PHRASES = {
    "flat": "on a {color} background",
    "gradient": "on a {color} to {color2} gradient background",
    "stripes": "on a {color} and {color2} striped background",
}
_REFERENCES = ("{shape}", "{color} {shape}")  # templates supply the article
_OBJECT_PHRASE = "a {color} {shape}"
_JOINERS = ("and",)
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "make the {ref} {color}",
        "change the color of the {ref} to {color}",
        "turn the {ref} {color}",
        "paint the {ref} {color}",
    ),
    "replace": (
        "turn the {ref} into a {shape}",
        "replace the {ref} with a {color} {shape}",
        "change the {ref} into a {shape}",
        "make the {ref} a {shape}",
    ),
    "remove": ("remove the {ref}", "delete the {ref}", "erase the {ref}", "get rid of the {ref}"),
    "add": ("add a {color} {shape}", "put a {color} {shape} in the scene", "insert a {color} {shape}"),
    "background": (
        "make the background {color}",
        "change the background to {color}",
        "turn the background {color}",
        "paint the background {color}",
    ),
    "global": (
        "make it {style}",
        "show it {style_caption}",
        "render it {style_caption}",
        "change the style to {style}",
    ),
}

# The simple world: one object, so a shape names it; only the new attribute is free ("add" also says where)
_SIMPLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    **_TEMPLATES,
    "replace": (
        "turn the {ref} into a {shape}",
        "replace the {ref} with a {shape}",
        "change the {ref} into a {shape}",
        "make the {ref} a {shape}",
    ),
    "add": ("add a {color} {shape} {place}", "put a {color} {shape} {place}", "insert a {color} {shape} {place}"),
}


def _templates(world: str) -> dict[str, tuple[str, ...]]:
    return _SIMPLE_TEMPLATES if world == "simple" else _TEMPLATES


SUPERSAMPLE = 2
_STRIPE_PERIOD = 1 / 4  # one light and one dark stripe per period; 8 px stripes at 64 px survive a stride-4 VAE
_SIZE_RANGE = (0.2, 0.34)  # 13-22 px at 64 px: two or more latent tokens across, so a tiny base can draw them
_SPEED_RANGE = (0.01, 0.03)
# The simple world's object fills a box of this side: circle 25-30 %, square 23-27 %, triangle (filling its
# box) 16-19 % of the frame, so a replaced shape stays in range too
_SIMPLE_SIZE_RANGE = (0.56, 0.615)
_SIMPLE_ADD_SIZE = 0.58  # an added object's box: fixed, so "add a red square at the top left" says all of it
SQUARE_HALF = 0.85  # a square's half-side relative to the object's radius, so its area is close to the disc's
_STAR_INNER = 0.45  # inner/outer radius: fatter than a regular pentagram, so small stars stay legible
_WINTER_TINT = np.array([230.0, 240.0, 255.0])
_NIGHT_GAIN = np.array([0.85, 0.9, 1.25]) * 0.35
_NIGHT_TINT = np.array([0.0, 0.0, 20.0])
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class Background:
    kind: str  # "flat" | "gradient" | "stripes"
    color: str
    color2: str  # the gradient's right end or the second stripe colour; equals `color` for flat backgrounds


@dataclass
class Obj:
    shape: str
    color: str
    x: float  # centre at t=0, canvas units; x to the right, y downwards
    y: float
    vx: float  # canvas units per frame
    vy: float
    size: float  # extent (diameter of the enclosing circle), canvas units


@dataclass
class Scene:
    background: Background
    objects: list[Obj]
    style: str | None = None  # one of GLOBAL_STYLES, applied to the rendered pixels
    world: str = DEFAULT_WORLD  # one of WORLDS: which edits apply, and the triangle's geometry


# The scene of `examples/shapes.mp4` (examples/make_shapes.py renders it; the default-edit test and benchmark
# read edits of it): one large blue circle drifting over flat green, so that each of the four edits a new user
# tries first ("make the circle red", "remove the circle", "make the background pink", "make it black and
# white") has one right answer that its pixels can be checked against
EXAMPLE_SCENE = Scene(
    Background("flat", "green", "green"),
    [Obj("circle", "blue", x=0.4, y=0.45, vx=0.012, vy=0.008, size=0.58)],
    world="simple",
)
EXAMPLE_FRAMES, EXAMPLE_SIZE, EXAMPLE_FPS = 33, 64, 12  # Wan's 4k + 1 frames


@dataclass
class Edit:
    kind: str
    instruction: str
    source: Scene
    target: Scene

    @property
    def local(self) -> bool:
        return self.kind in LOCAL_KINDS


@dataclass
class Example:
    kind: str
    instruction: str
    source_caption: str
    target_caption: str
    source: np.ndarray  # uint8 (frames, size, size, 3)
    target: np.ndarray  # uint8 (frames, size, size, 3)
    mask: np.ndarray  # bool (frames, size, size)


# ---------------------------------------------------------------- sampling scenes


def _choice(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _overlaps(obj: Obj, others: list[Obj]) -> bool:
    # Objects start apart so every object is visible in the first frame: an edit on a fully hidden object
    # would have an empty mask, and a one-frame example is only its first frame.
    return any(np.hypot(obj.x - o.x, obj.y - o.y) < (obj.size + o.size) / 2 for o in others)


def _new_object(rng: np.random.Generator, shape: str, color: str, others: list[Obj]) -> Obj:
    for _ in range(200):
        size = float(rng.uniform(*_SIZE_RANGE))
        x, y = (float(v) for v in rng.uniform(size / 2, 1 - size / 2, 2))
        speed, angle = float(rng.uniform(*_SPEED_RANGE)), float(rng.uniform(0, 2 * np.pi))
        obj = Obj(shape, color, x, y, speed * np.cos(angle), speed * np.sin(angle), size)
        if not _overlaps(obj, others):
            break
    return obj  # after many failures an overlapping placement is still a valid scene


def _free_pairs(scene: Scene) -> list[tuple[str, str]]:
    """(shape, colour) pairs a new object may take: not already present, not a background colour."""
    taken = {(o.shape, o.color) for o in scene.objects}
    bg = {scene.background.color, scene.background.color2}
    return [(s, c) for s in SHAPES for c in PALETTE if c not in bg and (s, c) not in taken]


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {WORLDS}")


def _simple_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    if n_objects not in (0, 1):
        raise ValueError(f"a simple-world scene holds 0 or 1 objects, got {n_objects}")
    kind = _choice(rng, SIMPLE_BACKGROUND_KINDS)
    color = _choice(rng, PALETTE)
    color2 = color if kind == "flat" else _choice(rng, [c for c in PALETTE if c != color])
    scene = Scene(Background(kind, color, color2), [], world="simple")
    if n_objects:
        shape = _choice(rng, SIMPLE_SHAPES)
        obj_color = _choice(rng, [c for c in PALETTE if c not in (color, color2)])
        size = float(rng.uniform(*_SIMPLE_SIZE_RANGE))
        x, y = (float(v) for v in rng.uniform(size / 2, 1 - size / 2, 2))
        speed, angle = float(rng.uniform(*_SPEED_RANGE)), float(rng.uniform(0, 2 * np.pi))
        scene.objects.append(Obj(shape, obj_color, x, y, speed * np.cos(angle), speed * np.sin(angle), size))
    return scene


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, world: str = DEFAULT_WORLD) -> Scene:
    _check_world(world)
    if world == "simple":
        return _simple_scene(rng, 1 if n_objects is None else n_objects)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be between 1 and {MAX_OBJECTS}, got {n}")
    kind = _choice(rng, BACKGROUND_KINDS)
    color = _choice(rng, PALETTE)
    color2 = color if kind == "flat" else _choice(rng, [c for c in PALETTE if c != color])
    scene = Scene(Background(kind, color, color2), [], world="hard")
    for _ in range(n):
        shape, obj_color = _choice(rng, _free_pairs(scene))
        scene.objects.append(_new_object(rng, shape, obj_color, scene.objects))
    return scene


def _bounce(p0: float, v: float, size: float, t: int) -> float:
    lo, span = size / 2, 1.0 - size
    if span <= 0:
        return 0.5
    # Unfold the reflections: travel freely along a line of period 2*span and mirror the second half back.
    p = (p0 - lo + v * t) % (2 * span)
    return lo + (2 * span - p if p > span else p)


def positions(obj: Obj, t: int) -> tuple[float, float]:
    return _bounce(obj.x, obj.vx, obj.size, t), _bounce(obj.y, obj.vy, obj.size, t)


# ---------------------------------------------------------------- rendering


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres in canvas units, (n, n) each with n = size * SUPERSAMPLE."""
    c = (np.arange(size * SUPERSAMPLE) + 0.5) / (size * SUPERSAMPLE)
    xs, ys = np.meshgrid(c, c)
    xs.flags.writeable = ys.flags.writeable = False  # cached and shared between calls
    return xs, ys


def _downsample(a: np.ndarray, size: int) -> np.ndarray:
    return a.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, *a.shape[2:]).mean(axis=(1, 3))


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, world: str = DEFAULT_WORLD) -> np.ndarray:
    up = -dy  # the shapes are defined with y upwards so "upward triangle" reads naturally
    if shape == "triangle" and world == "simple":
        # isosceles, filling its 2r box (apex at the top, base at the bottom): half a square's area, where the
        # inscribed equilateral one below has 0.41 of a circle's and would fall under 15 % of the frame
        return (up >= -r) & (np.abs(dx) <= (r - up) / 2)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= SQUARE_HALF * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":
        # equilateral, inscribed in the radius-r circle, so its centroid is the object's position
        return (up >= -r / 2) & (up <= r - np.sqrt(3) * np.abs(dx))
    if shape == "star":
        half = np.pi / 5  # angle between an outer point and the next inner corner
        phi = np.abs((np.arctan2(up, dx) - np.pi / 2) % (2 * half) - half)  # 0 at an inner corner, half at a point
        ri = _STAR_INNER * r
        # polar equation of the straight edge from the inner corner (angle 0, ri) to the point (angle half, r)
        edge = r * ri * np.sin(half) / (ri * np.sin(phi) + r * np.sin(half - phi))
        return dx**2 + dy**2 <= edge**2
    raise ValueError(f"unknown shape {shape!r}")


def _background(bg: Background, size: int) -> np.ndarray:
    xs, _ = _grid(size)
    c1, c2 = np.array(PALETTE[bg.color], float), np.array(PALETTE[bg.color2], float)
    if bg.kind == "flat":
        weight = np.zeros_like(xs)
    elif bg.kind == "gradient":
        weight = xs
    elif bg.kind == "stripes":
        weight = ((xs / _STRIPE_PERIOD) % 1.0 >= 0.5).astype(float)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    return _downsample(c1 + weight[..., None] * (c2 - c1), size)


def _apply_style(img: np.ndarray, style: str | None) -> np.ndarray:
    if style is None:
        return img
    luma = (img @ _LUMA)[..., None]
    if style == "black and white":
        return np.repeat(luma, 3, axis=-1)
    if style == "night":
        return img * _NIGHT_GAIN + _NIGHT_TINT
    if style == "winter":
        return 0.6 * (img + 0.6 * (luma - img)) + 0.4 * _WINTER_TINT
    raise ValueError(f"unknown style {style!r}")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def coverage(obj: Obj, t: int, size: int, world: str = DEFAULT_WORLD) -> np.ndarray:
    """How much of each pixel `obj` covers at frame `t`: (size, size) in [0, 1], antialiased."""
    xs, ys = _grid(size)
    cx, cy = positions(obj, t)
    return _downsample(_shape_mask(obj.shape, xs - cx, ys - cy, obj.size / 2, world).astype(float), size)


def render_background(bg: Background, size: int = 64) -> np.ndarray:
    """The background alone, float RGB (size, size, 3) in 0-255."""
    return _background(bg, size)


def _frame(scene: Scene, t: int, size: int, background: np.ndarray) -> np.ndarray:
    img = background.copy()
    for obj in scene.objects:  # in list order: later objects cover earlier ones
        alpha = coverage(obj, t, size, scene.world)[..., None]
        img = img * (1 - alpha) + alpha * np.array(PALETTE[obj.color], float)
    return _to_uint8(_apply_style(img, scene.style))


def render_frame(scene: Scene, t: int, size: int = 64) -> np.ndarray:
    return _frame(scene, t, size, _background(scene.background, size))


def render(scene: Scene, frames: int = 17, size: int = 64) -> np.ndarray:
    background = _background(scene.background, size)  # static, so computed once per video
    return np.stack([_frame(scene, t, size, background) for t in range(frames)])


# ---------------------------------------------------------------- language


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption(scene: Scene) -> str:
    phrases = [_OBJECT_PHRASE.format(color=o.color, shape=o.shape) for o in scene.objects]
    bg = scene.background
    background = _BACKGROUND_PHRASES[bg.kind].format(color=bg.color, color2=bg.color2)
    if not phrases:  # the simple world's empty scenes, which "add" starts from: "a green background"
        text = background.removeprefix("on ")
    else:
        objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + f" {_JOINERS[0]} " + phrases[-1]
        text = f"{objects} {background}".strip()
    if scene.style is not None:
        text += ", " + _STYLE_NAMES[scene.style]
    return _fix_articles(text)


def _reference(obj: Obj, scene: Scene) -> str:
    unique = sum(o.shape == obj.shape for o in scene.objects) == 1
    return _REFERENCES[0 if unique else 1].format(shape=obj.shape, color=obj.color)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def vocabulary(world: str = DEFAULT_WORLD) -> list[str]:
    """Every word of every caption and instruction of `world`, from the generators' own tables (complete by
    construction). Per world, so that a `hard` tokenizer, and the random initialisation that follows its size,
    stays what it was before the simple world existed."""
    _check_world(world)
    texts = [*PALETTE, *SHAPES, *GLOBAL_STYLES, *_STYLE_NAMES.values(), *_BACKGROUND_PHRASES.values()]
    texts += [*_REFERENCES, _OBJECT_PHRASE, *_JOINERS, "an"]  # "an" comes from _fix_articles
    texts += [t for templates in _templates(world).values() for t in templates]
    if world == "simple":
        texts += list(SIMPLE_PLACES)
    return sorted(set().union(*(_words(t) for t in texts)))


# ---------------------------------------------------------------- edits


def _is_grey(color: str) -> bool:
    r, g, b = PALETTE[color]
    return r == g == b


def _simple_options(scene: Scene, kind: str) -> list[dict]:
    """The simple world's edits: recolour, replace, remove, background and global on its one object's scene,
    add on an empty one (at a named place)."""
    objs, bg = scene.objects, scene.background
    if kind not in LOCAL_KINDS:
        return _options(scene, kind, world_rules=False)  # background and global: the hard world's rules
    if kind == "add":
        free = [c for c in PALETTE if c not in (bg.color, bg.color2)]
        places = list(SIMPLE_PLACES)
        return (
            [] if objs else [{"shape": s, "color": c, "place": p} for s in SIMPLE_SHAPES for c in free for p in places]
        )
    if len(objs) != 1:
        return []
    (obj,) = objs
    if kind == "recolor":
        return [{"index": 0, "color": c} for c in PALETTE if c not in (obj.color, bg.color, bg.color2)]
    if kind == "replace":
        return [{"index": 0, "shape": s} for s in SIMPLE_SHAPES if s != obj.shape]
    return [{"index": 0}]  # remove: leaves the background


def _options(scene: Scene, kind: str, world_rules: bool = True) -> list[dict]:
    """Every concrete edit of `kind` that is possible on `scene` (empty when the kind is impossible)."""
    if world_rules and scene.world == "simple":
        return _simple_options(scene, kind)
    objs, bg = scene.objects, scene.background
    pairs = {(o.shape, o.color) for o in objs}
    if kind == "recolor":
        return [
            {"index": i, "color": c}
            for i, o in enumerate(objs)
            for c in PALETTE
            if c not in (o.color, bg.color, bg.color2) and (o.shape, c) not in pairs
        ]
    if kind == "replace":
        return [
            {"index": i, "shape": s}
            for i, o in enumerate(objs)
            for s in SHAPES
            if s != o.shape and (s, o.color) not in pairs
        ]
    if kind == "remove":
        return [{"index": i} for i in range(len(objs))] if len(objs) >= 2 else []
    if kind == "add":
        return [{"shape": s, "color": c} for s, c in _free_pairs(scene)] if len(objs) < MAX_OBJECTS else []
    if kind == "background":
        used = {o.color for o in objs} | {bg.color, bg.color2}
        return [{"color": c} for c in PALETTE if c not in used]
    if kind == "global":
        # black and white would leave an all-grey scene unchanged, and an edit must change something
        all_grey = all(_is_grey(c) for c in [bg.color, bg.color2, *(o.color for o in objs)])
        return [{"style": s} for s in GLOBAL_STYLES if s != scene.style and not (s == "black and white" and all_grey)]
    raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")


def possible_kinds(scene: Scene) -> list[str]:
    return [k for k in EDIT_KINDS if _options(scene, k)]


def sample_edit(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Edit:
    if kind is None:
        kind = _choice(rng, possible_kinds(scene))
    options = _options(scene, kind)
    if not options:
        raise ValueError(f"a {kind!r} edit is not possible on a scene with {len(scene.objects)} object(s)")
    opt = _choice(rng, options)
    template = _choice(rng, _templates(scene.world)[kind])
    target = copy.deepcopy(scene)  # the source stays exactly as given
    words: dict[str, str] = {}
    if "index" in opt:
        words["ref"] = _reference(scene.objects[opt["index"]], scene)
        obj = target.objects[opt["index"]]
        words["color"], words["shape"] = obj.color, obj.shape
    if kind == "recolor":
        obj.color = words["color"] = opt["color"]
    elif kind == "replace":
        obj.shape = words["shape"] = opt["shape"]
    elif kind == "remove":
        del target.objects[opt["index"]]
    elif kind == "add" and scene.world == "simple":
        words.update(opt)
        target.objects.append(_placed_object(opt["shape"], opt["color"], opt["place"]))
    elif kind == "add":
        words.update(opt)
        target.objects.append(_new_object(rng, opt["shape"], opt["color"], target.objects))
    elif kind == "background":
        words["color"] = opt["color"]
        target.background = Background("flat", opt["color"], opt["color"])
    elif kind == "global":
        target.style = words["style"] = opt["style"]
        words["style_caption"] = _STYLE_NAMES[opt["style"]]
    return Edit(kind, _fix_articles(template.format(**words)), scene, target)


def _placed_object(shape: str, color: str, place: str) -> Obj:
    """The simple world's added object: a fixed size at the named place, unmoving (nothing in the source or
    the instruction says how it would move)."""
    fx, fy = SIMPLE_PLACES[place]
    lo, span = _SIMPLE_ADD_SIZE / 2, 1 - _SIMPLE_ADD_SIZE
    return Obj(shape, color, lo + fx * span, lo + fy * span, 0.0, 0.0, _SIMPLE_ADD_SIZE)


def render_edit(edit: Edit, frames: int = 17, size: int = 64) -> Example:
    source = render(edit.source, frames, size)
    target = render(edit.target, frames, size)
    return Example(
        kind=edit.kind,
        instruction=edit.instruction,
        source_caption=caption(edit.source),
        target_caption=caption(edit.target),
        source=source,
        target=target,
        mask=(source != target).any(axis=-1),
    )


def sample_example(
    seed: int, frames: int = 17, size: int = 64, kinds: tuple[str, ...] | None = None, world: str = DEFAULT_WORLD
) -> Example:
    _check_world(world)
    kinds = EDIT_KINDS if kinds is None else tuple(kinds)
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {EDIT_KINDS}, got {kinds}")
    rng = np.random.default_rng(seed)
    # The kind is drawn first, so kinds stay uniformly represented even though some need particular scenes.
    kind = _choice(rng, kinds)
    while True:
        # the simple world's "add" starts from an empty background, every other edit from one object
        n_objects = (0 if kind == "add" else 1) if world == "simple" else None
        scene = sample_scene(rng, n_objects, world)
        if _options(scene, kind):
            return render_edit(sample_edit(scene, rng, kind), frames, size)
