"""Figures of class-activation maps (matplotlib): signals, images, volumes, videos, tokens.

Every figure function takes numpy arrays -- the input item(s), the CAM in [0, 1] and its score
range (min, max) -- draws the map in score units (``cam * (max - min) + min``) with a colour bar
spanning exactly that range, and returns a ``matplotlib.figure.Figure``, saved when
``path=`` is given. Figures are made outside ``pyplot`` (on their own Agg canvas), so none
is ever left open and no backend is switched; Jupyter still displays a returned Figure.
``volume_gif`` and ``save_figures`` write files and return their paths.

- :func:`signal_figure`: channels as lines coloured sample by sample (1D CAMs, and 2D
  signal-image CAMs per channel); :func:`heatmap_figure`: channel x time heatmap.
- :func:`overlay_figure`: the CAM blended over images, signal-images and spectrograms.
- :func:`montage_figure` and :func:`volume_gif`: volumes and videos.
- :func:`token_figure`: token sequences, padding left out.
- :func:`save_figures`: one file per explained row of an Explanation (or of plain arrays),
  the figure chosen from the map's rank.
"""

from .images import overlay_figure, overlay_rgb
from .save import save_figures
from .signals import heatmap_figure, signal_figure
from .titles import method_title, row_title
from .tokens import token_figure
from .volumes import montage_figure, volume_gif

__all__ = [
    "heatmap_figure", "method_title", "montage_figure", "overlay_figure", "overlay_rgb",
    "row_title", "save_figures", "signal_figure", "token_figure", "volume_gif",
]
