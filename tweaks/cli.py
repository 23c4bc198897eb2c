"""``one-tweaks``: the operator's command line.

    one-tweaks apply DOMAIN_XML --vm VM_XML [--rules DIR]... [-o OUT] [--explain] [--json]
                     [--moment deploy|migrate|restore|hotplug] [--fact dest.NAME=VALUE]...
    one-tweaks check [--rules DIR]...
    one-tweaks schema
    one-tweaks list

Every failure is one line on stderr and a non-zero exit; no tracebacks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from .errors import TweakError
from .record import field, record

if TYPE_CHECKING:
    import argparse

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


def _parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(EXIT_USAGE, f"one-tweaks: {message} (see one-tweaks --help)\n")

    p = _Parser(prog="one-tweaks", description="Rule-driven tweaks of OpenNebula's libvirt domain XML.",
                epilog="more commands: " + ", ".join(plugins) if plugins else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rules_help = "extra rules directory, applied after the shipped ones and /etc/one/tweaks.d (repeatable)"

    a = sub.add_parser("apply", help="tweak a domain XML and print the result")
    a.add_argument("domain", metavar="DOMAIN_XML", help="libvirt domain XML written by oned ('-' for stdin)")
    a.add_argument("--vm", required=True, metavar="VM_XML", help="the VM document (onevm show -x)")
    a.add_argument("--rules", action="append", default=[], metavar="DIR", help=rules_help)
    a.add_argument("-o", "--output", metavar="OUT", help="write the result to OUT (atomically) instead of stdout")
    a.add_argument("--explain", action="store_true", help="print what each rule did on stderr")
    a.add_argument("--json", action="store_true", help="print the report on stderr as JSON")
    a.add_argument("--moment", default="deploy", metavar="MOMENT",
                   help="run the rules for this moment: deploy (default), migrate, restore or hotplug")
    a.add_argument("--fact", action="append", default=[], metavar="dest.NAME=VALUE",
                   help="a fact about the moment, e.g. dest.host=node2 for a migration (repeatable)")

    c = sub.add_parser("check", help="validate rule files")
    c.add_argument("--rules", action="append", default=[], metavar="DIR", help=rules_help)

    sub.add_parser("schema", help="print the JSON Schema of rule files")
    ls = sub.add_parser("list", help="list the tweaks and their parameters")
    ls.add_argument("--markdown", action="store_true", help="as the README's catalogue table")
    return p


def _read(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise TweakError(f"{path}: cannot read {what}: {exc.strerror}") from None


def write_atomic(path: str, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename: never half a file.
    (Not ``tempfile``: its import chain costs a deploy about 2 ms.)"""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise TweakError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TweakError(f"{path}: cannot write: {exc.strerror}") from None


@record
class ApplyArgs:
    domain: str
    vm: str
    rules: list[str] = field(default_factory=list)
    output: str | None = None
    explain: bool = False
    json: bool = False
    moment: str = "deploy"
    fact: list[str] = field(default_factory=list)


def fast_apply_args(argv: Sequence[str]) -> ApplyArgs | None:
    """``apply`` arguments in the plain form the deploy hook and scripts use, without
    argparse (its import and parser build cost a deploy about 5 ms). Anything else (help,
    ``--opt=value``, abbreviations, a value that looks like an option, a mistake) gives
    None, and argparse parses it with its usual messages."""
    if not argv or argv[0] != "apply":
        return None
    args = ApplyArgs(domain="", vm="")
    positional: list[str] = []
    words = iter(argv[1:])
    for word in words:
        if word in ("--explain", "--json"):
            setattr(args, word[2:], True)
        elif word in ("--vm", "--rules", "-o", "--output", "--moment", "--fact"):
            value = next(words, None)
            if value is None or (value.startswith("-") and value != "-"):
                return None
            if word == "--rules":
                args.rules.append(value)
            elif word == "--fact":
                args.fact.append(value)
            elif word == "--moment":
                args.moment = value
            elif word == "--vm":
                args.vm = value
            else:
                args.output = value
        elif word.startswith("-") and word != "-":
            return None
        else:
            positional.append(word)
    if len(positional) != 1 or not args.vm:
        return None
    args.domain = positional[0]
    return args


def _stderr(line: str) -> None:
    sys.stderr.write(f"one-tweaks: {line}\n")


def moment_facts(items: Sequence[str]) -> dict[str, str]:
    """``--fact dest.NAME=VALUE`` items as a dict; TweakError names the bad one."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("dest.") or not name[5:] or not all(
                c.islower() or c == "_" for c in name[5:]) or not name.isascii():
            raise TweakError(f"--fact {item!r} is not dest.NAME=VALUE")
        if not value.isprintable():
            raise TweakError(f"--fact {name}: the value contains control characters")
        out[name] = value
    return out


def cmd_apply(args: ApplyArgs | argparse.Namespace) -> int:
    from . import engine, loader, provenance
    from .rules import MOMENTS
    from .validate import DomainSchema

    if args.moment not in MOMENTS:
        raise TweakError(f"--moment {args.moment!r} is not one of {', '.join(MOMENTS)}")
    facts = moment_facts(args.fact)
    schema = DomainSchema()

    domain_data = _read(args.domain, "domain XML")
    vm_data = _read(args.vm, "VM XML")
    domain_name = "stdin" if args.domain == "-" else args.domain
    domain = engine.parse_xml(domain_data, domain_name)
    vm = engine.parse_xml(vm_data, args.vm)
    ruleset = loader.load(args.rules)
    outcome = engine.apply_rules(domain, vm, ruleset.rules, schema=schema, warn=_stderr,
                                 moment=args.moment, moment_facts=facts)
    provenance.stamp(outcome.tree.getroot(), outcome.report, ruleset.hashes)
    declaration = domain_data.lstrip().startswith(b"<?xml")
    data = engine.serialize(outcome.tree, declaration)
    if args.output:
        write_atomic(args.output, data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    if args.json:
        sys.stderr.write(outcome.report.to_json() + "\n")
    elif args.explain:
        text = outcome.report.to_text()
        if ruleset.cache_note and ruleset.cache_note != "rules from cache":
            text += f"\nnote: {ruleset.cache_note}"
        sys.stderr.write(text + "\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from . import loader
    from .checker import check_files

    files = loader.collect(loader.rule_dirs(args.rules))
    contents = loader._read_all(files)
    result = check_files(contents)
    for problem in result.problems:
        print(problem)
    if result.problems:
        return EXIT_PROBLEMS
    active = sum(1 for r in result.rules if r.enabled)
    print(f"{len(files)} rule files, {active} rules enabled: OK")
    return EXIT_OK


def cmd_schema(_: argparse.Namespace) -> int:
    from .schema import dumps

    sys.stdout.write(dumps())
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from . import registry

    if args.markdown:
        sys.stdout.write(catalogue_markdown())
        return EXIT_OK
    for tweak in registry.all_tweaks():
        print(f"{tweak.name}: {tweak.summary}")
        if tweak.attributes:
            print(f"    VM attributes: {', '.join(tweak.attributes)}")
        if tweak.fragments:
            print(f"    shapes a hot-plugged device alone: {', '.join(tweak.fragments)}")
        for p in tweak.params:
            default = "" if p.default is None else f" (default {p.default})"
            print(f"    {p.name}: {p.type_doc()}{default} - {p.doc}")
    return EXIT_OK


def catalogue_markdown() -> str:
    """The README's tweak table: one row per parameter, generated so it cannot go stale."""
    from . import registry

    lines = ["| tweak | what it does | parameter | format and bounds | default | VM attributes (shipped rules) |",
             "|---|---|---|---|---|---|"]
    for tweak in registry.all_tweaks():
        attrs = ", ".join(f"`{a}`" for a in tweak.attributes) or "(operator rules only)"
        for i, p in enumerate(tweak.params):
            default = "required" if p.default is None else f"`{p.default}`" if p.default != "" else "unset"
            first = i == 0
            cells = [f"`{tweak.name}`" if first else "", tweak.summary if first else "", f"`{p.name}`",
                     f"{p.type_doc()}: {p.doc}", default, attrs if first else ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("<", "&lt;") for c in cells) + " |")
    return "\n".join(lines) + "\n"


COMMANDS = {"apply": cmd_apply, "check": cmd_check, "schema": cmd_schema, "list": cmd_list}


PLUGIN_GROUP = "one_tweaks.commands"


def _plugin(name: str) -> Callable[[list[str]], int] | None:
    """A command another part of the product registers (entry point group
    ``one_tweaks.commands``), e.g. the storage drivers' ``trash``: the engine itself never
    imports storage code, and ``apply`` never pays for the lookup."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name == name:
            loaded: Callable[[list[str]], int] = ep.load()
            return loaded
    return None


def plugin_names() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=PLUGIN_GROUP))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    fast = fast_apply_args(args_list)
    if fast is not None:
        return _guarded(lambda: cmd_apply(fast), EXIT_USAGE)
    if args_list and args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
        plugin = _plugin(args_list[0])
        if plugin is not None:
            return _guarded(lambda: plugin(args_list[1:]), EXIT_PROBLEMS)
    helping = not args_list or args_list[0] in ("-h", "--help")
    args = _parser(plugin_names() if helping else ()).parse_args(args_list)
    # bad input to `check` is a problem found; to anything else, a usage error
    return _guarded(lambda: COMMANDS[args.command](args), EXIT_PROBLEMS if args.command == "check" else EXIT_USAGE)


def console() -> NoReturn:
    """The ``one-tweaks`` executable. After ``apply`` (run on every VM deploy) it leaves
    without the interpreter's teardown: freeing the documents, the compiled schema and
    every module costs about 10 ms, as much as all the rules; apply has written and
    fsynced its output by then and registers no exit handlers."""
    code = main()
    if sys.argv[1:2] != ["apply"]:
        sys.exit(code)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _guarded(call: Callable[[], int], on_error: int) -> int:
    """Run a command; every failure becomes one line on stderr, never a traceback."""
    try:
        return call()
    except TweakError as exc:
        _stderr(str(exc))
        return on_error
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        _stderr("interrupted")
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        _stderr(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL
