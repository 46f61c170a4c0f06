"""Pictures of the devices' panels, drawn from each patch's presentation rectangles (matplotlib), so
the README shows what a user gets before installing anything. `vaejam m4l build --panels DIR`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from max_for_live.build import DEVICE_FILES, DEVICE_HEIGHT, boxes, read_device

SCALE = 2  # pixels per Live pixel in the picture
BACKGROUND, FACE, INK, ACCENT = "#a6a6a6", "#d9d9d9", "#1a1a1a", "#ffa600"


def _label(box: dict[str, Any]) -> str:
    valueof = box.get("saved_attribute_attributes", {}).get("valueof", {})
    kind = box["maxclass"]
    if kind in ("comment", "textbutton", "live.text"):
        return str(box.get("text", ""))
    if kind == "textedit":
        return str(box.get("text", "")) or "(text)"
    if kind == "live.menu":
        return f"{valueof.get('parameter_enum', ['?'])[0]} v"
    if kind == "live.numbox":
        value = valueof.get("parameter_initial", [0])[0]
        return f"{value:g}" if isinstance(value, float) else str(value)
    if kind == "live.dial":
        value = valueof.get("parameter_initial", [0])[0]
        return f"{valueof.get('parameter_shortname', '')}\n{value:g}"
    return ""


def draw_panel(patcher: dict[str, Any], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    width = float(patcher["patcher"]["devicewidth"])
    fig = plt.figure(figsize=(width * SCALE / 100, (DEVICE_HEIGHT + 16) * SCALE / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(DEVICE_HEIGHT, -16)  # y down, as in Max; a title bar above the panel
    ax.axis("off")
    ax.add_patch(Rectangle((0, -16), width, 16, color="#5a5a5a"))
    ax.text(4, -8, title, color="white", fontsize=7 * SCALE / 2, va="center", weight="bold")
    ax.add_patch(Rectangle((0, 0), width, DEVICE_HEIGHT, color=BACKGROUND))
    font = 5.5 * SCALE / 2
    for box in boxes(patcher):
        if not box.get("presentation"):
            continue
        x, y, w, h = box["presentation_rect"]
        kind, text = box["maxclass"], _label(box)
        if kind == "live.dial":
            ax.add_patch(Circle((x + w / 2, y + h / 2 - 2), min(w, h) / 4, fill=False, lw=1.5, color=INK))
            ax.plot([x + w / 2, x + w / 2], [y + h / 2 - 2, y + h / 2 - 2 - min(w, h) / 4], color=ACCENT, lw=1.5)
            name, value = text.split("\n")
            ax.text(x + w / 2, y + 3, name, ha="center", va="top", fontsize=font, color=INK)
            ax.text(x + w / 2, y + h - 2, value, ha="center", va="bottom", fontsize=font, color=INK)
        elif kind == "live.toggle":
            ax.add_patch(Rectangle((x, y), w, h, facecolor=FACE, edgecolor=INK, lw=0.8))
        elif kind == "comment":
            ax.text(x + 1, y + 2, text, ha="left", va="top", fontsize=font, color=INK, wrap=True)
        else:
            face = ACCENT if kind in ("live.text", "textbutton") else FACE
            ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor=INK, lw=0.8))
            ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=font, color=INK)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_all(devices: Path, out: Path) -> list[Path]:
    """One PNG per committed device in `devices`, named after it."""
    written = []
    for name in DEVICE_FILES.values():
        _, patcher = read_device((devices / name).read_bytes())
        written.append(draw_panel(patcher, name.removesuffix(".amxd"), out / name.replace(".amxd", ".png")))
    return written
