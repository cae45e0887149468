"""Located blueprint messages: every error names file, line, column and key path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem found in a blueprint, located at a key or value in the source."""

    file: str
    line: int  # 1-based; 0 when unknown
    col: int  # 1-based; 0 when unknown
    key_path: str  # e.g. "endpoints[3].config.proxy.upstream"; "" for the document itself
    message: str
    severity: Severity = field(default="error", compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        path = f" {self.key_path}:" if self.key_path else ""
        label = "" if self.severity == "error" else " warning:"
        return f"{where}:{label}{path} {self.message}"


class BlueprintError(Exception):
    """A blueprint that cannot be served; carries every located error at once."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.diagnostics)
        head = f"{count} error{'s' if count != 1 else ''} in blueprint"
        return head + ":\n" + "\n".join(f"  {d}" for d in self.diagnostics)


def format_key_path(loc: tuple[str | int, ...]) -> str:
    """("endpoints", 3, "config", "proxy") -> "endpoints[3].config.proxy"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
