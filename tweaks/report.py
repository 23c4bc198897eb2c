"""What the engine did, per rule: for --explain (text) and --json."""

from __future__ import annotations

from .record import field, record
from .xmledit import Change

APPLIED = "applied"          # matched and changed the document
UNCHANGED = "unchanged"      # matched; the document already was as the rule wants
NOT_MATCHED = "not-matched"  # its condition failed, or its parameters have no value
DISABLED = "disabled"
SKIPPED = "skipped"          # bad value or broken rule file: warned, nothing changed
ROLLED_BACK = "rolled-back"  # failed or made the XML schema-invalid: changes undone


@record
class RuleResult:
    name: str
    file: str
    status: str
    reason: str = ""
    changes: list[Change] = field(default_factory=list)
    # the tweaks of the rule that changed the document (for provenance)
    tweaks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.name, "file": self.file, "status": self.status, "reason": self.reason,
                "changes": [c.as_dict() for c in self.changes]}


@record
class Report:
    vm: str
    normalized: list[Change] = field(default_factory=list)
    results: list[RuleResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validation: str = "not needed"
    moment: str = "deploy"

    def as_dict(self) -> dict[str, object]:
        return {"vm": self.vm, "moment": self.moment, "validation": self.validation,
                "normalized": [c.as_dict() for c in self.normalized],
                "rules": [r.as_dict() for r in self.results], "warnings": self.warnings}

    def to_json(self) -> str:
        import json

        return json.dumps(self.as_dict(), indent=2)

    def to_text(self) -> str:
        at = "" if self.moment == "deploy" else f" ({self.moment})"
        lines = [f"VM {self.vm}{at}: schema validation: {self.validation}"]
        if self.normalized:
            lines.append("normalized oned quirks:")
            lines.extend(f"  {c}" for c in self.normalized)
        for r in self.results:
            head = f"rule {r.name}: {r.status}"
            if r.reason:
                head += f" ({r.reason})"
            lines.append(head)
            lines.extend(f"  {c}" for c in r.changes)
        return "\n".join(lines)

    @property
    def changed(self) -> bool:
        return bool(self.normalized) or any(r.status == APPLIED for r in self.results)
