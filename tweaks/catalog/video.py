"""video: replace the first ``<video><model>`` (T_VIDEO_MODEL ``type=... heads=... primary=...``).

accel2d/accel3d/rendernode go into ``<acceleration>``. A ``<video>`` is added when
the domain has none. oned's VIDEO wins over a rule default; T_VIDEO_MODEL wins.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from ..params import Choice, Format, Int, Param, Text, split_key_values
from ..tweak import Context, Tweak

TYPES = ("vga", "cirrus", "vmvga", "xen", "vbox", "qxl", "virtio", "gop", "bochs", "ramfb", "none")
_YESNO = ("yes", "no")
KEYS: dict[str, Param] = {
    "type": Choice("type", "", choices=TYPES),
    "vram": Int("vram", "", minimum=1024, maximum=4 * 1024 * 1024),
    "ram": Int("ram", "", minimum=1024, maximum=4 * 1024 * 1024),
    "vram64": Int("vram64", "", minimum=1024, maximum=64 * 1024 * 1024),
    "vgamem": Int("vgamem", "", minimum=1024, maximum=1024 * 1024),
    "heads": Int("heads", "", minimum=1, maximum=16),
    "primary": Choice("primary", "", choices=_YESNO),
    "blob": Choice("blob", "", choices=("on", "off")),
    "accel3d": Choice("accel3d", "", choices=_YESNO),
    "accel2d": Choice("accel2d", "", choices=_YESNO),
    "rendernode": Text("rendernode", "", pattern=r"/dev/dri/renderD[0-9]{1,4}", hint="/dev/dri/renderDN"),
}
ACCEL = ("accel3d", "accel2d", "rendernode")
MODEL_ORDER = ("type", "ram", "vram", "vram64", "vgamem", "heads", "primary", "blob")


def parse_video(text: str) -> dict[str, Any]:
    from ..errors import ParamError

    values = split_key_values(text, KEYS)
    if "type" not in values:
        raise ParamError("type=... is required")
    return values


class Video(Tweak):
    summary = "replace the video model (type, vram, heads, primary, acceleration)"
    attributes = ("T_VIDEO_MODEL",)
    params = (
        Format("model", "space-separated key=value: " + ", ".join(KEYS), parser=parse_video,
               syntax="type=T [vram=N] [heads=N] [primary=yes] ..."),
    )

    def apply(self, ctx: Context) -> None:
        if ctx.facts.get("template.VIDEO/TYPE") and not ctx.explicit("model"):
            ctx.note("kept oned's VIDEO")
            return
        values: dict[str, Any] = ctx.params["model"]
        editor = ctx.editor
        devices = ctx.devices()
        video = devices.find("video")
        if video is None:
            video = editor.add(devices, "video", after=("graphics", "input", "controller", "interface", "disk"))
        wanted = {k: str(values[k]) for k in MODEL_ORDER if k in values}
        accel = {k: str(values[k]) for k in ACCEL if k in values}
        model = video.find("model")
        if model is not None and _same(model, wanted, accel):
            return
        if model is None:
            model = editor.add(video, "model", wanted, index=0)
        else:
            model = editor.replace(model, "model", wanted)
        if accel:
            editor.add(model, "acceleration", accel)


def _same(model: etree._Element, wanted: dict[str, str], accel: dict[str, str]) -> bool:
    attrs = {str(k): str(v) for k, v in model.attrib.items()}
    children = [c for c in model if isinstance(c.tag, str)]
    if attrs != wanted or len(children) != (1 if accel else 0):
        return False
    if not accel:
        return True
    found = {str(k): str(v) for k, v in children[0].attrib.items()}
    return children[0].tag == "acceleration" and found == accel


TWEAK = Video()
