"""smm: System Management Mode (T_FEATURE_SMM, T_FEATURE_SMM_TSEG).

T_FEATURE_SMM: ``on``/``off`` (any yes/no word), or addon-storpool's ``:state=on|off``
(``<smm>`` has no other attribute). T_FEATURE_SMM_TSEG: ``N[:unit=U]`` with U one of
KiB, MiB (default), GiB; the size must be a whole number of MiB and at most 65535 MiB
(QEMU's extended TSEG limit), and libvirt accepts it only on q35 machines.

Result: ``<features><smm state='on'><tseg unit='MiB'>N</tseg></smm></features>``; a TSEG
alone turns SMM on. ``off`` drops the TSEG, and is refused while a secure-boot loader
needs SMM. The existing ``<features>`` is used (the engine merged duplicates first);
a second one is never created.
"""

from __future__ import annotations

import re

from ..errors import ParamError
from ..params import FALSE_WORDS, Bool, Format, Param, split_key_values
from ..tweak import Context, Tweak
from ._firmware import feature, machine_is_q35, machine_is_x86, secure_boot_requested

UNITS = {"kib": ("KiB", 1), "k": ("KiB", 1), "mib": ("MiB", 1024), "m": ("MiB", 1024),
         "gib": ("GiB", 1024 * 1024), "g": ("GiB", 1024 * 1024)}
MAX_TSEG_MIB = 65535
_NUMBER = re.compile(r"[0-9]{1,10}")
STATE_KEYS: dict[str, Param] = {"state": Bool("state", "")}


def parse_state(text: str) -> bool:
    """``on|off`` or ``[on|off]:state=on|off``."""
    head, colon, tail = text.partition(":")
    head = head.strip()
    state: bool | None = Bool("state", "").parse(head) if head else None
    if colon:
        attr = split_key_values(tail, STATE_KEYS).get("state")
        if attr is not None and state is not None and attr != state:
            raise ParamError("on/off and state= disagree")
        state = attr if attr is not None else state
    if state is None:
        raise ParamError("no state: give on or off (or :state=on)")
    return state


def parse_tseg(text: str) -> tuple[int, str]:
    """``N[:unit=U]`` -> (N, canonical unit)."""
    head, colon, tail = text.partition(":")
    head = head.strip()
    if not head and colon:
        head = "0"  # ":unit=MiB" is a size of 0, as addon-storpool's feature_smm.py reads it
    if not _NUMBER.fullmatch(head):
        raise ParamError("size is not a whole number")
    unit = "MiB"
    kib = 1024
    if colon:
        for item in tail.split():
            key, eq, value = item.partition("=")
            if key.lower() != "unit" or not eq:
                raise ParamError(f"item {item[:32]!r} is not unit=KiB|MiB|GiB")
            found = UNITS.get(value.lower())
            if found is None:
                raise ParamError(f"unit {value[:16]!r} is not KiB, MiB or GiB")
            unit, kib = found
    size = int(head)
    total_kib = size * kib
    if total_kib % 1024:
        raise ParamError("TSEG size must be a whole number of MiB")
    if total_kib > MAX_TSEG_MIB * 1024:
        raise ParamError(f"TSEG larger than {MAX_TSEG_MIB} MiB")
    return size, unit


def _secure_boot_turned_off(ctx: Context) -> bool:
    """The VM turns secure boot off (T_OS_SECURE_BOOT=no): the secure-boot rule, which runs
    after this one, makes the loader non-secure, so SMM may go off now. (Refusing here
    and accepting on the next run would make the rules change their own output.)"""
    raw = ctx.facts.get("user.T_OS_SECURE_BOOT")
    return raw is not None and raw.strip().lower() in FALSE_WORDS


class Smm(Tweak):
    summary = "System Management Mode <smm state=...> with an optional extended TSEG size"
    attributes = ("T_FEATURE_SMM", "T_FEATURE_SMM_TSEG")
    params = (
        Format("state", "on|off, or :state=on|off; empty: leave alone", default="", parser=parse_state,
               syntax="on|off|:state=on|off", max_len=32),
        Format("tseg", "extended TSEG size N[:unit=KiB|MiB|GiB] (MiB default); empty: leave alone",
               default="", parser=parse_tseg, syntax="N[:unit=MiB]", max_len=32,
               pattern=r"^[0-9]+(:.*)?$"),
    )

    def apply(self, ctx: Context) -> None:
        state: bool | str = ctx.params["state"]
        tseg: tuple[int, str] | str = ctx.params["tseg"]
        if state == "" and tseg == "":
            ctx.note("neither T_FEATURE_SMM nor T_FEATURE_SMM_TSEG given")
            return
        if state is False:
            if tseg:
                raise ctx.reject("tseg", "a TSEG size needs SMM on")
            if secure_boot_requested(ctx.root) and not _secure_boot_turned_off(ctx):
                raise ctx.reject("state", "the secure-boot loader needs SMM on")
        if tseg and machine_is_x86(ctx.root) and not machine_is_q35(ctx.root):
            raise ctx.reject("tseg", "libvirt supports an SMM TSEG size on q35 machines only")
        editor = ctx.editor
        smm = ctx.root.find("features/smm")
        if state == "" and smm is not None and smm.get("state") == "off":
            raise ctx.reject("tseg", "SMM is off (<smm state='off'>)")
        smm = feature(editor, "smm")
        editor.set_attr(smm, "state", "off" if state is False else "on")
        current = smm.find("tseg")
        if state is False:
            if current is not None:
                editor.remove(current)
            return
        if isinstance(tseg, tuple):
            size, unit = tseg
            if current is None:
                current = editor.add(smm, "tseg", {"unit": unit})
            editor.set_attr(current, "unit", unit)
            editor.set_text(current, str(size))


TWEAK = Smm()
