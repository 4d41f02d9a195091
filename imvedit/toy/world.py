"""A deterministic "shapes world": videos of moving coloured shapes, their captions, and edits with exact ground truth.

Every edit is rendered twice from scene descriptions that share their motion, so the edited video, the changed-pixel
mask and both captions are known exactly. Geometry is in normalised canvas units, so any pixel size renders the same
world. Only numpy is needed.
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

SUPERSAMPLE = 2
_STRIPE_PERIOD = 1 / 4  # one light and one dark stripe per period; 8 px stripes at 64 px survive a stride-4 VAE
_SIZE_RANGE = (0.2, 0.34)  # 13-22 px at 64 px: two or more latent tokens across, so a tiny base can draw them
_SPEED_RANGE = (0.01, 0.03)
_SQUARE_HALF = 0.85  # a square's half-side relative to the object's radius, so its area is close to the disc's
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


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be between 1 and {MAX_OBJECTS}, got {n}")
    kind = _choice(rng, BACKGROUND_KINDS)
    color = _choice(rng, PALETTE)
    color2 = color if kind == "flat" else _choice(rng, [c for c in PALETTE if c != color])
    scene = Scene(Background(kind, color, color2), [])
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


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    up = -dy  # the shapes are defined with y upwards so "upward triangle" reads naturally
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= _SQUARE_HALF * r
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


def _frame(scene: Scene, t: int, size: int, background: np.ndarray) -> np.ndarray:
    img = background.copy()
    xs, ys = _grid(size)
    for obj in scene.objects:  # in list order: later objects cover earlier ones
        cx, cy = positions(obj, t)
        alpha = _downsample(_shape_mask(obj.shape, xs - cx, ys - cy, obj.size / 2).astype(float), size)[..., None]
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
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + f" {_JOINERS[0]} " + phrases[-1]
    bg = scene.background
    text = f"{objects} {_BACKGROUND_PHRASES[bg.kind].format(color=bg.color, color2=bg.color2)}".strip()
    if scene.style is not None:
        text += ", " + _STYLE_NAMES[scene.style]
    return _fix_articles(text)


def _reference(obj: Obj, scene: Scene) -> str:
    unique = sum(o.shape == obj.shape for o in scene.objects) == 1
    return _REFERENCES[0 if unique else 1].format(shape=obj.shape, color=obj.color)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def vocabulary() -> list[str]:
    """Every word of every caption and instruction, from the generators' own tables (complete by construction)."""
    texts = [*PALETTE, *SHAPES, *GLOBAL_STYLES, *_STYLE_NAMES.values(), *_BACKGROUND_PHRASES.values()]
    texts += [*_REFERENCES, _OBJECT_PHRASE, *_JOINERS, "an"]  # "an" comes from _fix_articles
    texts += [t for templates in _TEMPLATES.values() for t in templates]
    return sorted(set().union(*(_words(t) for t in texts)))


# ---------------------------------------------------------------- edits


def _is_grey(color: str) -> bool:
    r, g, b = PALETTE[color]
    return r == g == b


def _options(scene: Scene, kind: str) -> list[dict]:
    """Every concrete edit of `kind` that is possible on `scene` (empty when the kind is impossible)."""
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
    template = _choice(rng, _TEMPLATES[kind])
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


def sample_example(seed: int, frames: int = 17, size: int = 64, kinds: tuple[str, ...] | None = None) -> Example:
    kinds = EDIT_KINDS if kinds is None else tuple(kinds)
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {EDIT_KINDS}, got {kinds}")
    rng = np.random.default_rng(seed)
    # The kind is drawn first, so kinds stay uniformly represented even though some need particular scenes.
    kind = _choice(rng, kinds)
    while True:
        scene = sample_scene(rng)
        if _options(scene, kind):
            return render_edit(sample_edit(scene, rng, kind), frames, size)
