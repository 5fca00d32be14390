"""Problems met while reading input: reported, counted, skipped, never fatal on their own."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing that could not be read: where it was and why."""

    file: str
    offset: int  # byte offset in the (decompressed) capture, -1 when not applicable
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}@{self.offset}" if self.offset >= 0 else self.file
        return f"{where}: {self.reason}"


@dataclass
class ProblemLog:
    """Collects problems; keeps the first ``limit`` in full and counts all of them."""

    limit: int = 1000
    problems: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, file: str, offset: int, reason: str) -> None:
        self.total += 1
        if len(self.problems) < self.limit:
            self.problems.append(Problem(str(file), int(offset), reason))

    def extend(self, other: ProblemLog) -> None:
        for p in other.problems:
            self.add(p.file, p.offset, p.reason)
        self.total += other.total - len(other.problems)

    def to_json(self) -> dict:
        return {"total": self.total, "listed": [asdict(p) for p in self.problems]}
