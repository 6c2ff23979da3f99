"""Token sequences (text, DNA): each token coloured by its importance, padding left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..errors import InputError
from ._common import (
    DEFAULT_DPI,
    PathLike,
    add_colorbar,
    check_cams,
    check_ranges,
    finish,
    get_cmap,
    new_figure,
    score_norm,
    to_scores,
    wrap_title,
)

_MONO_ADVANCE = 0.6     # width of a monospace character, in ems (DejaVu Sans Mono: 0.602)
_LINE_SPACING = 2.0     # text line pitch, in font sizes
_MAX_TICK_TOKENS = 60   # beyond this the bar chart's axis shows positions, not tokens


def token_positions(tokens: Sequence[str], n_positions: int, mask=None) -> np.ndarray:
    """Indices of the real (non-padding) positions among the ``n_positions`` of the map.

    mask: ``(T,)`` booleans, True for a real token (an attention mask). Without a mask, the
    first ``len(tokens)`` positions are the tokens and the rest is padding. ``tokens`` may
    hold a string for every position (padding included) or for the real ones only.
    """
    if mask is None:
        if len(tokens) > n_positions:
            raise InputError(f"{len(tokens)} tokens for a map over {n_positions} positions: "
                             f"give at most one token per position.")
        return np.arange(len(tokens))
    mask = np.asarray(mask)
    if mask.shape != (n_positions,) or mask.dtype.kind not in "bi":
        raise InputError(f"mask has shape {mask.shape} and dtype {mask.dtype}: expected "
                         f"({n_positions},) booleans, True for a real token, False for padding.")
    positions = np.flatnonzero(mask)
    if len(tokens) not in (n_positions, len(positions)):
        raise InputError(f"{len(tokens)} tokens for {n_positions} positions of which "
                         f"{len(positions)} are real: give a token per position or per real "
                         f"position.")
    return positions


def wrap(widths: Sequence[float], line_width: float, gap: float) -> list[tuple[int, float]]:
    """(line, x) of boxes of the given widths laid out left to right, wrapped at line_width."""
    places, line, x = [], 0, 0.0
    for w in widths:
        if x > 0 and x + w > line_width:
            line, x = line + 1, 0.0
        places.append((line, x))
        x += w + gap
    return places


def token_figure(tokens: Sequence[str], cam, score_range, *, mask=None,
                 cmap: str | Colormap = "jet", title: str | None = None,
                 colorbar_label: str = "importance", bars: bool = True, width: float = 10.0,
                 font_size: float = 10.0, path: PathLike | None = None,
                 dpi: float = DEFAULT_DPI) -> Figure:
    """The tokens of one sequence as text, each on a box coloured by its importance.

    tokens: strings (words, sub-words, bases); cam: ``(T,)`` in [0, 1] over token positions;
    score_range: its (min, max), mapped back as ``cam * (max - min) + min``; the colour bar
    spans it exactly. mask: ``(T,)`` booleans, True for real tokens; padding positions are
    left out (see :func:`token_positions`). bars: also draw the importance per position as
    coloured bars above the text (SignalGrad-CAM's token bar plot). Returns the Figure (saved
    to ``path`` when given); it is not registered with pyplot.
    """
    cam = check_cams(cam, 1)
    if cam.ndim != 1:
        raise InputError(f"cam has shape {cam.shape}: expected one (T,) map over token "
                         f"positions.")
    positions = token_positions(tokens, len(cam), mask)
    words = [str(tokens[p] if len(tokens) == len(cam) else tokens[i])
             for i, p in enumerate(positions)]
    (lo_hi,) = check_ranges(score_range, 1)
    cmap, norm = get_cmap(cmap), score_norm(lo_hi)
    scores = to_scores(cam[positions], lo_hi)
    colours = cmap(norm(scores))

    # Fixed layout (inches) so that character units on the text axes match the font.
    title = wrap_title(title, width - 0.5)
    left, right, bottom = 0.75, 1.35, 0.15
    top = 0.25 + 0.2 * (title.count("\n") + 1) if title else 0.2
    text_w = width - left - right
    char = font_size * _MONO_ADVANCE / 72  # inches per character
    line_chars = text_w / char
    places = wrap([max(len(w), 1) + 0.6 for w in words], line_chars, gap=0.35)
    n_lines = places[-1][0] + 1 if places else 1
    line_h = _LINE_SPACING * font_size / 72
    text_h = n_lines * line_h
    bars_h, bars_gap = (1.5, 0.75 if len(words) <= _MAX_TICK_TOKENS else 0.55) if bars else (0, 0)
    height = top + bars_h + bars_gap + text_h + bottom
    fig = new_figure(width, height, constrained=False)

    def rect(x0: float, y0: float, w: float, h: float) -> list[float]:
        return [x0 / width, y0 / height, w / width, h / height]

    ax = fig.add_axes(rect(left, bottom, text_w, text_h))
    ax.set(xlim=(0, line_chars), ylim=(n_lines, 0))
    ax.set_axis_off()
    for word, colour, (line, x) in zip(words, colours, places):
        w = max(len(word), 1) + 0.6
        ax.add_patch(Rectangle((x, line + 0.1), w, 0.8, facecolor=colour, edgecolor="none"))
        luminance = colour[:3] @ np.array([0.299, 0.587, 0.114])
        ax.text(x + w / 2, line + 0.52, word, ha="center", va="center", family="monospace",
                fontsize=font_size, color="white" if luminance < 0.5 else "black")

    if bars:
        bx = fig.add_axes(rect(left, bottom + text_h + bars_gap, text_w, bars_h))
        bx.bar(positions, scores, width=0.85, color=colours)
        bx.set_xlim(-0.6, positions.max(initial=0) + 0.6)
        bx.set_ylabel(colorbar_label, fontsize=8)
        bx.tick_params(labelsize=7)
        bx.grid(axis="y", alpha=0.3, lw=0.5)
        if len(words) <= _MAX_TICK_TOKENS:
            bx.set_xticks(positions, words, rotation=90, fontsize=7, family="monospace")
        else:
            bx.set_xlabel("token position", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    cax = fig.add_axes(rect(width - right + 0.25, bottom, 0.15, height - top - bottom))
    add_colorbar(fig, None, norm, cmap, colorbar_label, cax=cax)
    return finish(fig, path, dpi)
