"""Finding, checking and caching rule files.

Order: the shipped ``rules.d`` (package data), then ``/etc/one/tweaks.d`` (or
``$ONE_TWEAKS_RULES_DIR``), then each ``--rules DIR``. Files apply in lexical order
of their names; a later file with an earlier one's name replaces it.

Checking needs PyYAML and jsonschema, which cost more than a whole deploy may take.
So the checked rules are cached (marshal, keyed by the content of every rule file
and by this code) and a deploy with unchanged files imports neither. A cache that
is missing, corrupt or unwritable only costs speed.
"""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from . import __version__, plugins
from .errors import InputError
from .record import field, record
from .rules import Rule

DEFAULT_ETC_DIR = "/etc/one/tweaks.d"
RULE_SUFFIXES = (".yaml", ".yml")
_CACHE_FORMAT = 5  # 3: rules carry their moments (on:); 4: key from the files' own hashes; 5: entry points remembered

try:  # the builtin sha256 avoids loading OpenSSL through hashlib on the hot path
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Python builds
    from hashlib import sha256


@record
class Problem:
    file: str
    line: int
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        return where + (f"rule {self.rule}: " if self.rule else "") + self.message


@record
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    cache_note: str = ""
    # (path, SHA-256 of the content) of every rule file in effect, in order (provenance)
    hashes: list[tuple[str, str]] = field(default_factory=list)


def shipped_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "shipped_rules")  # where a wheel puts rules.d
    if os.path.isdir(installed):
        return installed
    # A source checkout, run in place or installed in editable mode.
    return os.path.join(os.path.dirname(here), "rules.d")


def rule_dirs(extra: Sequence[str] = ()) -> list[tuple[str, bool]]:
    """(directory, must_exist) in precedence order, lowest first."""
    etc = os.environ.get("ONE_TWEAKS_RULES_DIR", DEFAULT_ETC_DIR)
    return [(shipped_dir(), True), (etc, False), *((d, True) for d in extra)]


def collect(dirs: Iterable[tuple[str, bool]]) -> list[tuple[str, str]]:
    """(file name, path) of the files that apply, in the order they apply."""
    chosen: dict[str, str] = {}
    for directory, must_exist in dirs:
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            if must_exist:
                raise InputError(f"{directory}: rules directory does not exist") from None
            continue
        except OSError as exc:
            raise InputError(f"{directory}: cannot read rules directory: {exc.strerror}") from None
        for entry in entries:
            if entry.endswith(RULE_SUFFIXES) and not entry.startswith("."):
                chosen[entry] = os.path.join(directory, entry)
    return sorted(chosen.items())


def _read_all(files: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    out = []
    for _name, path in files:
        try:
            with open(path, "rb") as fh:
                out.append((path, fh.read()))
        except OSError as exc:
            raise InputError(f"{path}: cannot read rule file: {exc.strerror}") from None
    return out


def _code_fingerprint() -> bytes:
    """Changes whenever this package's code changes (upgrades, development)."""
    parts = [__version__, sys.version]
    here = os.path.dirname(os.path.abspath(__file__))
    for directory in (here, os.path.join(here, "catalog")):
        with os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.name.endswith(".py"):
                    st = entry.stat()
                    parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts).encode()


def cache_path() -> str | None:
    configured = os.environ.get("ONE_TWEAKS_CACHE_DIR")
    if configured is not None:
        base = configured
    else:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "one-tweaks")
    if not base or base.lower() == "off":
        return None
    return os.path.join(base, "rules.cache")


def _cache_key(hashes: list[tuple[str, str]]) -> str:
    """From each rule file's path and SHA-256 (those provenance records anyway: the files
    are hashed once per apply, not twice) and this package's code."""
    digest = sha256(_code_fingerprint())
    for base in plugins.search_dirs():  # a distribution installed or removed: entry points change
        try:
            stamp = os.stat(base or ".").st_mtime_ns
        except OSError:
            stamp = 0
        digest.update(f"\0{base}\0{stamp}".encode("utf-8", "surrogateescape"))
    for path, file_sha in hashes:
        digest.update(b"\0" + path.encode("utf-8", "surrogateescape") + b"\0" + file_sha.encode())
    return str(digest.hexdigest())


def _cache_read(path: str, key: str) -> list[dict[str, Any]] | None:
    try:
        with open(path, "rb") as fh:
            # one read, then loads: marshal.load on a file object reads it piece by piece
            # through Python calls, ten times slower (1.4 ms against 0.15 ms per apply)
            data = marshal.loads(fh.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT
            or data.get("key") != key or not isinstance(data.get("rules"), list)
            or not isinstance(data.get("entry_points"), dict)):
        return None
    rules: list[dict[str, Any]] = data["rules"]
    if not all(isinstance(r, dict) for r in rules):
        return None
    plugins.remember({str(k): str(v) for k, v in data["entry_points"].items()})
    return rules


def _cache_write(path: str, key: str, rules: list[dict[str, Any]]) -> str:
    import tempfile

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rules.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                marshal.dump({"format": _CACHE_FORMAT, "key": key, "rules": rules,
                              "entry_points": {plugins.FACTS_GROUP: plugins.first_target(plugins.FACTS_GROUP)}}, fh)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        return f"rule cache not written ({path}: {exc.strerror or exc})"
    return ""


def file_hashes(contents: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """(path, SHA-256 hex) of each rule file: what provenance records of the rules in effect."""
    return [(path, str(sha256(data).hexdigest())) for path, data in contents]


def load(extra_dirs: Sequence[str] = (), *, use_cache: bool = True) -> RuleSet:
    """The rules that apply, from the cache when it is current, else checked afresh."""
    files = collect(rule_dirs(extra_dirs))
    contents = _read_all(files)
    hashes = file_hashes(contents)
    path = cache_path() if use_cache else None
    key = ""
    if path is not None:
        key = _cache_key(hashes)
        cached = _cache_read(path, key)
        if cached is not None:
            try:
                return RuleSet([Rule.from_raw(raw) for raw in cached], cache_note="rules from cache",
                               hashes=hashes)
            except (KeyError, TypeError, ValueError):
                pass  # a cache from a different layout: rebuild it
    from .checker import check_files  # slow path: PyYAML + jsonschema

    ruleset = check_files(contents)
    ruleset.hashes = hashes
    if path is not None:
        ruleset.cache_note = _cache_write(path, key, [r.to_raw() for r in ruleset.rules])
    return ruleset
