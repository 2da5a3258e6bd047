"""Data errors that tell the user where, what was expected, and how to fix it.

Every message has the shape ``FILE:LINE: problem (expected ...; fix ...)`` so
editors and terminals can jump to the record, and so ``glmtune data check``
can print all problems of a file, not just the first.
"""

from __future__ import annotations

from ..errors import GlmtuneError

from dataclasses import dataclass, field


class DataError(GlmtuneError, ValueError):
    """Invalid data or data options; the message names file, line, expectation and fix."""


@dataclass(frozen=True)
class Problem:
    """One invalid record: where it is and what is wrong with it."""

    file: str
    """Path of the data file (as the user gave it)."""
    line: int | None
    """1-based line of the record (record number for formats without lines); None if not tied to one."""
    problem: str
    """What is wrong, e.g. ``unknown role 'bot'``."""
    expected: str = ""
    """What a valid record has instead."""
    fix: str = ""
    """What the user can do about it."""
    kind: str = "invalid"
    """Short reason key used to count skipped records by reason (e.g. ``unknown_role``)."""
    warning: bool = False
    """A warning: the record is used, but something about it deserves a look (or differs from the official demo)."""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        hint = "; ".join(x for x in (f"expected {self.expected}" if self.expected else "",
                                     f"fix: {self.fix}" if self.fix else "") if x)
        return f"{where}: {'warning: ' if self.warning else ''}{self.problem}" + (f" ({hint})" if hint else "")


class RecordError(DataError):
    """A :class:`DataError` about one record, carrying the structured :class:`Problem`."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def record_error(file: str, line: int | None, problem: str, expected: str = "", fix: str = "",
                 kind: str = "invalid") -> RecordError:
    return RecordError(Problem(str(file), line, problem, expected, fix, kind))


@dataclass
class DataProblems:
    """All problems found in a data set, for "report everything, then refuse"."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def extend(self, other: "DataProblems") -> None:
        self.problems.extend(other.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __iter__(self):
        return iter(self.problems)

    def format(self, limit: int | None = None) -> str:
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [str(p) for p in shown]
        if limit is not None and len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more problems")
        return "\n".join(lines)

    def raise_if_any(self, what: str = "data", limit: int = 20) -> None:
        """Raise one :class:`DataError` listing the problems (first ``limit``)."""
        if not self.problems:
            return
        n = len(self.problems)
        raise DataError(
            f"{n} invalid record{'s' if n != 1 else ''} in {what}:\n{self.format(limit)}\n"
            "fix the records above, or set data.skip_invalid=true to train without them "
            "(run `glmtune data check` to list every problem)"
        )
