"""Applies rules to a domain document, one transaction per rule.

A rule that raises, or that adds a libvirt schema error the document did not already
have, is rolled back and reported; the next rule runs. So the result is never worse
than the input: valid input stays valid, and oned's own invalid output is not blamed
on the rules.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence

from lxml import etree

from . import registry
from .errors import InputError, ParamError, TweakError
from .facts import MOMENT_PREFIXES, Facts, Supplied, from_documents
from .normalize import normalize
from .plugins import supplied_facts
from .record import record
from .report import APPLIED, DISABLED, NOT_MATCHED, ROLLED_BACK, SKIPPED, UNCHANGED, Report, RuleResult
from .rules import DEPLOY, MOMENTS, Rule, idle_reason, resolve
from .tweak import Context
from .validate import DomainSchema
from .xmledit import Editor

_PARSER_OPTIONS = dict(
    strip_cdata=False, resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
    remove_comments=False, remove_pis=False,
)


def parse_xml(data: bytes, what: str) -> etree._ElementTree:
    """Parse ``data`` safely (no entities, no network); InputError names ``what``."""
    parser = etree.XMLParser(**_PARSER_OPTIONS)  # type: ignore[arg-type]
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{what}: malformed XML: {exc}") from None
    if root is None:
        raise InputError(f"{what}: empty XML document")
    return etree.ElementTree(root)


def serialize(tree: etree._ElementTree, declaration: bool = False) -> bytes:
    data: bytes = etree.tostring(tree, encoding="UTF-8", xml_declaration=declaration)
    return data if data.endswith(b"\n") else data + b"\n"


@record
class Outcome:
    tree: etree._ElementTree
    report: Report
    facts: Facts


def apply_rules(
    domain: etree._ElementTree,
    vm: etree._ElementTree | None,
    rules: Sequence[Rule],
    *,
    schema: DomainSchema | None = None,
    warn: Callable[[str], None] | None = None,
    moment: str = DEPLOY,
    moment_facts: Mapping[str, str] | None = None,
    supplied: Supplied | None = None,
) -> Outcome:
    """Normalise, then apply the ``rules`` that run at ``moment`` in order; ``warn`` gets
    each warning line. ``moment_facts`` are what the caller knows about the moment (the
    ``dest.*`` facts of a migration); rules for other moments are reported, not run.
    ``supplied``: the storage side's facts (``tweaks.facts``: ``storage.*``, ``system_ds.*``,
    ``disk.storage_*``); without them the ``one_tweaks.facts`` supplier is asked when a rule
    first wants one.

    Schema validation costs about a millisecond per call, so the rules first run with
    one validation at the end. Only if that finds an error the input did not have do
    they run again from the start, validating after each rule to roll back the ones
    that break the document.
    """
    if domain.getroot().tag != "domain":
        raise InputError(f"domain XML: root element is <{domain.getroot().tag}>, not <domain>")
    if vm is not None and vm.getroot().tag != "VM":
        raise InputError(f"VM XML: root element is <{vm.getroot().tag}>, not <VM>")
    if moment not in MOMENTS:
        raise InputError(f"moment {moment!r} is not one of {', '.join(MOMENTS)}")
    schema = schema if schema is not None else DomainSchema()
    editor = Editor(domain)
    normalize(editor)
    facts = from_documents(vm.getroot() if vm is not None else None, domain.getroot())
    for name, value in (moment_facts or {}).items():
        if not name.startswith(MOMENT_PREFIXES):
            raise InputError(f"fact {name!r} cannot be given for a moment (only {', '.join(MOMENT_PREFIXES)}*)")
        facts.scalars[name] = value
    if supplied is not None:
        facts.supply(*supplied)
    else:
        facts.supplier = functools.partial(supplied_facts, vm.getroot() if vm is not None else None,
                                           domain.getroot())
    normalized = list(editor.changes)
    pristine = copy.deepcopy(domain.getroot())

    report = _run(rules, facts, editor, None, moment)
    problems = [f"VM {facts.vm_id}: {problem}" for problem in facts.problems]
    if any(r.status == APPLIED for r in report.results):
        final = schema.errors(domain)
        if final is None:
            report.validation = f"skipped: {schema.problem}"
            report.warnings.append(f"VM {facts.vm_id}: {schema.problem}")
        elif final and final - (schema.errors(_as_tree(copy.deepcopy(pristine))) or frozenset()):
            domain._setroot(pristine)
            report = _run(rules, facts, editor, schema, moment)
            report.validation = "ok (rules checked one by one)"
        else:
            report.validation = "ok"
    report.normalized = normalized
    report.moment = moment
    report.warnings[:0] = problems
    if warn is not None:
        for line in report.warnings:
            warn(line)
    return Outcome(domain, report, facts)


def _run(rules: Sequence[Rule], facts: Facts, editor: Editor, schema: DomainSchema | None,
         moment: str = DEPLOY) -> Report:
    """One pass over the rules; with ``schema``, each rule must add no schema error."""
    domain = editor.tree
    report = Report(vm=facts.vm_id)

    def warning(text: str) -> None:
        report.warnings.append(f"VM {facts.vm_id}: {text}")

    baseline = schema.errors(domain) if schema is not None else None
    for rule in rules:
        result = RuleResult(rule.name, rule.file, UNCHANGED)
        report.results.append(result)
        if not rule.runs_at(moment):
            # Reported, not run: --explain shows that it exists for another moment.
            result.status, result.reason = NOT_MATCHED, f"runs on {', '.join(rule.on)}, not on {moment}"
            continue
        if rule.errors:
            result.status, result.reason = SKIPPED, "invalid rule file: " + "; ".join(rule.errors)
            warning(f"rule {rule.name}: skipped: {result.reason}")
            continue
        if not rule.enabled:
            result.status = DISABLED
            continue
        try:
            condition = rule.condition()
            failed = condition.evaluate(facts) if condition is not None else None
            plans = _plan(rule, facts, editor) if failed is None else []
        except ParamError as exc:
            result.status, result.reason = SKIPPED, exc.describe()
            warning(f"rule {rule.name}: {exc.describe()}; rule skipped")
            continue
        except TweakError as exc:
            result.status, result.reason = SKIPPED, str(exc)
            warning(f"rule {rule.name}: skipped: {exc}")
            continue
        if failed is not None:
            result.status, result.reason = NOT_MATCHED, failed
            continue
        if not any(ctx is not None for _, ctx in plans):
            result.status = NOT_MATCHED
            result.reason = "no value for " + "; ".join(reason for reason, _ in plans)
            continue

        # Our own tweaks edit only through the editor, whose journal undoes a rule; a tweak
        # from elsewhere might not, so its rule still works on a copy it can be rolled back to.
        editor.begin()
        snapshot = None if all(registry.journaled(ctx.tweak) for _, ctx in plans if ctx is not None) \
            else copy.deepcopy(domain.getroot())

        editor.changes = []
        notes: list[str] = []
        changed_by: list[str] = []
        try:
            for _, ctx in plans:
                if ctx is not None:
                    before = len(editor.changes)
                    registry.get(ctx.tweak).apply(ctx)
                    notes.extend(ctx.notes)
                    if len(editor.changes) > before and ctx.tweak not in changed_by:
                        changed_by.append(ctx.tweak)
        except ParamError as exc:
            _roll_back(editor, snapshot)
            result.status, result.reason = SKIPPED, exc.describe()
            warning(f"rule {rule.name}: {exc.describe()}; rule skipped")
            continue
        except Exception as exc:  # a tweak bug must not cost the deploy
            _roll_back(editor, snapshot)
            result.status, result.reason = ROLLED_BACK, f"{type(exc).__name__}: {exc}"
            warning(f"rule {rule.name}: rolled back: {result.reason}")
            continue
        result.reason = "; ".join(notes)
        if not editor.changes:
            continue
        if schema is not None and baseline is not None:
            now = schema.errors(domain) or frozenset()
            new = sorted(now - baseline)
            if new:
                _roll_back(editor, snapshot)
                result.status = ROLLED_BACK
                result.reason = "made the domain XML schema-invalid: " + "; ".join(new[:3])
                warning(f"rule {rule.name}: rolled back: {result.reason}")
                continue
            baseline = now
        result.status = APPLIED
        result.changes = editor.changes
        result.tweaks = changed_by
    editor.commit()
    return report


def _roll_back(editor: Editor, snapshot: etree._Element | None) -> None:
    """Undo the current rule: through the editor's journal, or back to the copy taken
    before it (a tweak from outside the catalogue)."""
    if snapshot is None:
        editor.rollback()
    else:
        editor.tree._setroot(snapshot)


def _as_tree(root: etree._Element) -> etree._ElementTree:
    return etree.ElementTree(root)


def _plan(rule: Rule, facts: Facts, editor: Editor) -> list[tuple[str, Context | None]]:
    """Resolve each call's parameters before anything changes (a bad value skips the
    whole rule). A call whose required parameters have no value is idle (None)."""
    plans: list[tuple[str, Context | None]] = []
    for call in rule.calls:
        idle = idle_reason(call, facts)
        if idle is not None:
            plans.append((idle, None))
            continue
        tweak = registry.get(call.tweak)
        resolved = resolve(tweak, call.params, facts)
        if resolved.missing:
            plans.append((f"{call.tweak}: {', '.join(resolved.missing)}", None))
            continue
        ctx = Context(tweak=call.tweak, editor=editor, facts=facts, params=resolved.values,
                      origins=resolved.origins, sources=resolved.sources, raws=resolved.raws)
        plans.append((call.tweak, ctx))
    return plans
