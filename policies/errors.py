"""Problems found in policy files, each with its file, line and column."""

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Where:
    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file  # no position: the file itself


@dataclass(frozen=True, order=True)
class Problem:
    where: Where
    message: str
    path: str = ""
    warning: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        at = f" (at {self.path})" if self.path else ""
        return f"{self.where}: {'warning: ' if self.warning else ''}{self.message}{at}"


class PolicyError(Exception):
    """One or more problems; the CLI prints each on a line and exits 2."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def json_path(path: tuple) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
