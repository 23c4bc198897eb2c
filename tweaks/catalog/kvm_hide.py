"""kvm_hide: hide the KVM signature from the guest (T_KVM_HIDE on|off, any yes/no word).

Result: ``<features><kvm><hidden state='on'/></kvm></features>`` (``off`` sets
``state='off'``). An existing ``<hidden>`` gets the new state; the existing ``<features>``
is used (never a second one).
"""

from __future__ import annotations

from ..params import Bool
from ..tweak import Context, Tweak
from ._firmware import feature


class KvmHide(Tweak):
    summary = "hide the KVM hypervisor signature (<kvm><hidden state=...>)"
    attributes = ("T_KVM_HIDE",)
    params = (Bool("hidden", "hide KVM from the guest (on) or not (off)"),)

    def apply(self, ctx: Context) -> None:
        editor = ctx.editor
        kvm = feature(editor, "kvm")
        hidden = editor.child(kvm, "hidden", {"state": "on"}, order=("hidden", "hint-dedicated", "poll-control",
                                                                     "pv-ipi", "dirty-ring"))
        editor.set_attr(hidden, "state", "on" if ctx.params["hidden"] else "off")


TWEAK = KvmHide()
