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
        shown = _short_repr(self.value)
        return f"{self.source}={shown}: {self}"


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
