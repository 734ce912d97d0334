"""Whether every piece of text a figure draws lies inside the figure (a clipped title, a legend cut off)."""

from __future__ import annotations

from matplotlib.figure import Figure


def text_outside(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """Descriptions of the drawn parts of ``fig`` that extend beyond its edges, in pixels.

    Every visible axes is measured with everything it draws (``get_tightbbox``: tick
    labels in view, titles, labels, texts, its legend); then the figure's own texts
    (the suptitle among them) and legends.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box = fig.bbox
    parts = [
        (f"axes {ax.get_title() or ax.get_label()!r}", ax.get_tightbbox(renderer))
        for ax in fig.axes
        if ax.get_visible()
    ]
    # fig.texts holds the suptitle too.
    parts += [(f"text {t.get_text()!r}", t.get_window_extent(renderer)) for t in fig.texts if t.get_visible()]
    parts += [(f"legend {i}", legend.get_window_extent(renderer)) for i, legend in enumerate(fig.legends)]
    out = []
    for what, extent in parts:
        if extent is None:
            continue
        if (
            extent.x0 < box.x0 - tolerance
            or extent.y0 < box.y0 - tolerance
            or extent.x1 > box.x1 + tolerance
            or extent.y1 > box.y1 + tolerance
        ):
            out.append(f"{what}: {extent.bounds} outside {box.bounds}")
    return out
