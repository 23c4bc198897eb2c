"""secure_boot: UEFI Secure Boot on or off (T_OS_SECURE_BOOT yes|no).

Secure boot is two settings libvirt requires together: the loader's ``secure='yes'``
and ``<features><smm state='on'/>`` (libvirt refuses a secure loader without SMM, and
on x86 without a q35 machine, so this is rejected elsewhere). ``yes``:

- with a ``<loader>`` (oned's OS/FIRMWARE, or T_OS_LOADER): ``secure='yes'``, plus
  ``type='pflash'`` and ``readonly='yes'`` when missing (a ``rom`` loader is refused);
- with ``<os firmware='efi'>`` (libvirt picks the firmware): ``secure='yes'`` on a
  path-less ``<loader>`` if there is one (libvirt 9.0 refuses ``type``/``readonly``
  there), else ``<firmware><feature enabled='yes' name='secure-boot'/></firmware>``;
- then SMM on. Without either there is no UEFI firmware to secure: rejected.

``no`` sets ``secure='no'`` on the loader and, for ``firmware='efi'``, disables the
``secure-boot`` and ``enrolled-keys`` firmware features (without that, libvirt 9.0 picks
a secure-boot firmware). SMM is left as it is.

oned's OS/FIRMWARE_SECURE wins over a rule default; an explicit T_OS_SECURE_BOOT wins.
"""

from __future__ import annotations

from lxml import etree

from ..params import Bool
from ..tweak import Context, Tweak
from ..xmledit import Editor
from ._firmware import OS_ORDER, check_secure_loader, turn_smm_on


class SecureBoot(Tweak):
    summary = "UEFI Secure Boot: secure loader plus SMM (yes), or plain UEFI (no)"
    attributes = ("T_OS_SECURE_BOOT",)
    params = (Bool("enabled", "secure boot on (secure loader + SMM) or off"),)

    def apply(self, ctx: Context) -> None:
        if ctx.facts.get("template.OS/FIRMWARE_SECURE") and not ctx.explicit("enabled"):
            ctx.note("kept oned's OS/FIRMWARE_SECURE")
            return
        enabled: bool = ctx.params["enabled"]
        editor = ctx.editor
        os_el = ctx.root.find("os")
        loader = None if os_el is None else os_el.find("loader")
        auto = os_el is not None and os_el.get("firmware") == "efi"
        if os_el is None or (loader is None and not auto):
            raise ctx.reject("enabled", "the domain has no UEFI firmware (set T_OS_LOADER or OS/FIRMWARE)")
        if enabled:
            check_secure_loader(ctx, "enabled")
        if auto and loader is not None:
            editor.set_attr(loader, "secure", "yes" if enabled else "no")
        elif loader is not None:
            if enabled and loader.get("type") == "rom":
                raise ctx.reject("enabled", "the loader is type='rom'; secure boot needs a pflash loader")
            attrs = {"secure": "yes" if enabled else "no"}
            if enabled:
                attrs = {"readonly": loader.get("readonly", "yes"), "type": "pflash", **attrs}
            editor.set_attrs(loader, attrs)
        elif enabled:
            _firmware_feature(editor, os_el, "secure-boot", "yes")
        else:
            _firmware_feature(editor, os_el, "enrolled-keys", "no")
            _firmware_feature(editor, os_el, "secure-boot", "no")
        if enabled:
            turn_smm_on(editor)


def _firmware_feature(editor: Editor, os_el: etree._Element, name: str, enabled: str) -> None:
    firmware = editor.child(os_el, "firmware", order=OS_ORDER)
    for el in firmware.iterfind("feature"):
        if el.get("name") == name:
            editor.set_attr(el, "enabled", enabled)
            return
    editor.add(firmware, "feature", {"enabled": enabled, "name": name})


TWEAK = SecureBoot()
