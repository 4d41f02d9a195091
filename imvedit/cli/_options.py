"""Options several commands share, declared once, so a flag reads the same in every command's --help.

Each is an `Annotated` type (`json_out: JsonOutput = False`); where only a command knows the default, a
function builds the option around the shared wording (`model: Annotated[str | None, model_option("...")]`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..toy.world import DEFAULT_WORLD, WORLDS

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the result as strict JSON on stdout (a batch: one object per job).")
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output (a batch skips existing ones otherwise).")
]


def model_option(default: str):
    """--model: which base, with the command's own default."""
    return typer.Option(
        "--model",
        help=f"The base: a diffusers Wan folder, a hub id, or a builtin (shapes-wan, tiny-random). (default: {default})",
    )


def adapter_option(default: str):
    """--adapter: which adapter, with the command's own default."""
    return typer.Option("--adapter", help=f"An adapter .safetensors or a run folder. (default: {default})")


def flow_shift_option(applies_to: str):
    """--flow-shift: the sampler's sigma shift, as Wan users set it per resolution."""
    return typer.Option(
        "--flow-shift",
        help=f"{applies_to}{'the' if applies_to else 'The'} sampler's sigma shift: higher spends more steps at high noise, where an edit's "
        "colours and layout are decided (Wan uses 3 at 480p, 5 at 720p). (default: the base's scheduler)",
    )


def world_option(applies_to: str):
    """--world: which shapes world, defaulting to the bundled base's."""
    return typer.Option(
        "--world",
        help=f"{applies_to}: the shapes world, one of {', '.join(WORLDS)} ('simple': one large object, 'hard': "
        f"1-3 small ones). (default: {DEFAULT_WORLD}, the bundled base's)",
    )


def guidance_2_option(applies_to: str):
    """--guidance-2: the text guidance below the boundary, as diffusers' Wan2.2 `guidance_scale_2`."""
    return typer.Option(
        "--guidance-2",
        help=f"{applies_to}{'t' if applies_to else 'T'}ext guidance below --guidance-boundary, where fine detail is "
        "drawn (Wan2.2-A14B: the low-noise expert's). (default: the base's; --guidance throughout, except the toy "
        "bases: 1 below sigma 0.8)",
    )


def guidance_boundary_option(applies_to: str):
    """--guidance-boundary: the sigma where --guidance-2 takes over."""
    return typer.Option(
        "--guidance-boundary",
        help=f"{applies_to}{'t' if applies_to else 'T'}he noise level (sigma in (0, 1)) below which --guidance-2 "
        "applies. (default: the base's; Wan2.2-A14B: its experts' boundary, the toy bases: 0.8)",
    )
