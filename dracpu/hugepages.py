"""Set per-node hugepage pool sizes through sysfs and report what the kernel gave.

Writes ``devices/system/node/node<N>/hugepages/hugepages-<kB>kB/nr_hugepages`` (needs root) and
reads it back: the kernel may give fewer pages than asked (fragmented memory, 1 GiB pages at
runtime), or keep more when shrinking a pool whose pages are in use. The read-back value is
the truth that is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dracpu.core.hugepage_provision import ProvisionTarget
from dracpu.core.memory import KIB, size_string
from dracpu.errors import DracpuError
from dracpu.sysfs import DEFAULT_ROOT

__all__ = ["HugePagePools", "HugePageSysfs", "ProvisionError", "ProvisionOutcome", "apply_targets"]


class ProvisionError(DracpuError):
    """A hugepage pool file is missing, unreadable or refused the write; names the path."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


@dataclass(frozen=True, slots=True)
class ProvisionOutcome:
    """One target after the write: the count before and what the kernel reports after."""

    target: ProvisionTarget
    before: int
    after: int
    error: str | None = None

    @property
    def met(self) -> bool:
        """True when the pool now holds exactly what was asked."""
        return self.error is None and self.after == self.target.count

    def describe(self) -> str:
        """One line: ``node 0 2Mi: asked 64, had 0, the kernel gave 64``."""
        t = self.target
        line = (
            f"node {t.node} {size_string(t.page_size)}: asked {t.count}, had {self.before}, "
            f"the kernel gave {self.after}"
        )
        return f"{line} ({self.error})" if self.error else line


class HugePagePools(Protocol):
    """Per-node hugepage pool counts: sysfs (:class:`HugePageSysfs`) or an in-memory double."""

    def read(self, node: int, page_size: int) -> int:
        """The pool's page count; raises ``ProvisionError`` when there is no such pool."""
        ...

    def write(self, node: int, page_size: int, count: int) -> None:
        """Ask for ``count`` pages; raises ``ProvisionError`` when refused."""
        ...


class HugePageSysfs:
    """The per-node ``nr_hugepages`` files under one sysfs root."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root

    def path(self, node: int, page_size: int) -> Path:
        """The ``nr_hugepages`` file of ``node``'s pool of ``page_size`` bytes."""
        return (
            self.root
            / "devices/system/node"
            / f"node{node}"
            / "hugepages"
            / f"hugepages-{page_size // KIB}kB"
            / "nr_hugepages"
        )

    def read(self, node: int, page_size: int) -> int:
        """The pool's current page count; ``ProvisionError`` if the pool does not exist."""
        path = self.path(node, page_size)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            raise ProvisionError(
                f"no {size_string(page_size)} hugepage pool on node {node}", path=str(path)
            ) from None
        except OSError as exc:
            raise ProvisionError(f"cannot read ({exc.strerror})", path=str(path)) from exc
        try:
            return int(text)
        except ValueError as exc:
            raise ProvisionError(f"not an integer: {text!r}", path=str(path)) from exc

    def write(self, node: int, page_size: int, count: int) -> None:
        """Ask the kernel for ``count`` pages; it may give fewer (read back to know)."""
        path = self.path(node, page_size)
        try:
            with open(path, "w") as f:
                f.write(str(count))
        except OSError as exc:
            raise ProvisionError(f"cannot write {count} ({exc.strerror})", path=str(path)) from exc


def apply_targets(
    pools: HugePagePools,
    targets: Sequence[ProvisionTarget],
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[ProvisionOutcome]:
    """Set every target in order and read each back; failures are recorded, not raised, so one
    refused pool does not stop the others. ``progress`` gets a line before each write (large
    pools take seconds to fill). ``dry_run`` only reads."""
    outcomes: list[ProvisionOutcome] = []
    for target in targets:
        where = f"node {target.node} {size_string(target.page_size)}"
        try:
            before = pools.read(target.node, target.page_size)
        except ProvisionError as exc:
            outcomes.append(ProvisionOutcome(target, 0, 0, str(exc)))
            continue
        if dry_run or before == target.count:
            outcomes.append(ProvisionOutcome(target, before, before if dry_run else target.count))
            continue
        progress(f"{where}: {before} -> {target.count} pages")
        error = None
        try:
            pools.write(target.node, target.page_size, target.count)
        except ProvisionError as exc:
            error = str(exc)
        try:
            after = pools.read(target.node, target.page_size)
        except ProvisionError as exc:
            after, error = before, error or str(exc)
        outcomes.append(ProvisionOutcome(target, before, after, error))
    return outcomes
