"""Exceptions that carry a one-line, operator-readable reason."""


class TweakError(Exception):
    """Base class: str(exc) is the whole message shown to the operator."""


class InputError(TweakError):
    """A file given on the command line is missing, unreadable or malformed."""


class ParamError(TweakError):
    """A parameter value (from a rule or from a VM attribute) is not acceptable.

    ``source`` names where the value came from (``USER_TEMPLATE/T_X`` or
    ``rule parameter count``) so the warning can say which attribute to fix.
    """

    def __init__(self, message: str, source: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.source = source
        self.value = value

    def describe(self) -> str:
        if self.source is None:
            return str(self)
        return f"{self.source}={shown(self.value)}: {self}"


def shown(value: object, limit: int = 60) -> str:
    """A value as its author wrote it, for messages: text quoted (control characters
    escaped by ``repr``), YAML scalars as they are, and never a Python object's repr."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    elif type(value).__str__ is not object.__str__:
        text = repr(str(value))  # e.g. a parsed name list prints as the text it came from
    elif type(value).__repr__ is not object.__repr__:
        text = repr(value)  # a YAML list or mapping from a rule file
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
