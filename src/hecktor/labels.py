"""The mask labels, declared once: their values (as in the HECKTOR release), names and colours
(for figures and for the colour tables written beside predicted masks)."""

from __future__ import annotations

BACKGROUND, GTVP, GTVN = 0, 1, 2
# value, name, colour (RGB, 0-255): green primary, yellow nodes
LABELS = ((GTVP, "GTVp", (26, 204, 51)), (GTVN, "GTVn", (255, 217, 0)))


def rgba(value: int, alpha: float = 0.85) -> tuple[float, float, float, float]:
    """A label's colour for matplotlib (transparent background)."""
    colours = {v: rgb for v, _, rgb in LABELS}
    if value not in colours:
        return (0.0, 0.0, 0.0, 0.0)
    return (*(c / 255 for c in colours[value]), alpha)
