"""Apply iptables rules the way kube-proxy does: render text, one `iptables-restore
--noflush` per table, touching only the chains named in it.

`Iptables` runs the real binaries (iptables-nft here); `FakeIptables` keeps the
tables in memory with the same restore semantics; both are tested alike.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class IptablesError(Exception):
    pass


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that sends traffic to one of weft's chains.

    `first` jumps are inserted at the top (they must see traffic before anyone
    accepts it); the others are appended (they accept what nobody refused).
    """

    table: str
    chain: str
    target: str
    comment: str
    match: str = ""
    first: bool = True

    def spec(self) -> list[str]:
        return [*self.match.split(), "-m", "comment", "--comment", self.comment,
                "-j", self.target]

    def restore_line(self) -> str:
        """The jump as a line of iptables-restore input (added without a flush)."""
        where = f"-I {self.chain} 1" if self.first else f"-A {self.chain}"
        return f"{where} " + " ".join(_quote(self.spec()))

    def found_in(self, rules: Sequence[str]) -> bool:
        """Is this jump among `rules` as iptables-save prints them?"""
        return any(f"-j {self.target}" in r and f'"{self.comment}"' in r for r in rules)


def restore_text(table: str, chains: dict[str, Sequence[str]],
                 delete: Sequence[str] = (), jumps: Sequence[Jump] = ()) -> str:
    """The input for iptables-restore: declare (so flush) and fill `chains`, add the
    `jumps` to built-in chains (not flushed: they are not declared), drop `delete`."""
    lines = [f"*{table}"]
    lines += [f":{name} - [0:0]" for name in [*chains, *delete]]
    for rules in chains.values():
        lines += rules
    lines += [jump.restore_line() for jump in jumps]
    lines += [f"-X {name}" for name in delete]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Applier(Protocol):
    def restore(self, table: str, chains: dict[str, Sequence[str]],
                delete: Sequence[str] = (), jumps: Sequence[Jump] = ()) -> None: ...

    def ensure_jump(self, jump: Jump) -> bool: ...

    def remove_jump(self, jump: Jump) -> bool: ...

    def chains(self, table: str) -> dict[str, list[str]]: ...


class Iptables:
    """The real thing, for IPv4 (`family=4`) or IPv6 (`family=6`)."""

    def __init__(self, family: int = 4) -> None:
        self.prefix = "iptables" if family == 4 else "ip6tables"

    def restore(self, table: str, chains: dict[str, Sequence[str]],
                delete: Sequence[str] = (), jumps: Sequence[Jump] = ()) -> None:
        text = restore_text(table, chains, delete, jumps)
        proc = subprocess.run([f"{self.prefix}-restore", "--noflush", "-w", "5"],
                              input=text.encode(), capture_output=True)
        if proc.returncode != 0:
            raise IptablesError(_restore_failure(proc.stderr.decode(errors="replace"), text))

    def ensure_jump(self, jump: Jump) -> bool:
        """Add the jump (at the top, or the end) unless it is there; True if added."""
        check = self._run("-t", jump.table, "-C", jump.chain, *jump.spec())
        if check.returncode == 0:
            return False
        where = ["-I", jump.chain, "1"] if jump.first else ["-A", jump.chain]
        insert = self._run("-t", jump.table, *where, *jump.spec())
        if insert.returncode != 0:
            raise IptablesError(f"failed to add {jump.chain} -> {jump.target} in "
                                f"{jump.table}: {insert.stderr.decode().strip()}")
        return True

    def remove_jump(self, jump: Jump) -> bool:
        removed = False
        while self._run("-t", jump.table, "-D", jump.chain, *jump.spec()).returncode == 0:
            removed = True
        return removed

    def chains(self, table: str) -> dict[str, list[str]]:
        """Chains of a table and their rules, as iptables-save writes them."""
        proc = self._run_save(table)
        return parse_save(proc)

    def _run_save(self, table: str) -> str:
        proc = subprocess.run([f"{self.prefix}-save", "-t", table], capture_output=True)
        if proc.returncode != 0:
            raise IptablesError(f"failed to read table {table}: {proc.stderr.decode().strip()}")
        return proc.stdout.decode()

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.prefix, "-w", "5", *args], capture_output=True)


def parse_save(text: str) -> dict[str, list[str]]:
    """{chain: [rule, ...]} from iptables-save output of one table."""
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            chains.setdefault(chain, []).append(line)
    return chains


@dataclass
class FakeIptables:
    """Tables in memory, with iptables-restore --noflush's rules."""

    tables: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def restore(self, table: str, chains: dict[str, Sequence[str]],
                delete: Sequence[str] = (), jumps: Sequence[Jump] = ()) -> None:
        current = self.tables.setdefault(table, {})
        for name, rules in chains.items():
            for rule in rules:
                words = rule.split()
                if words[:2] != ["-A", name]:
                    raise IptablesError(f"rule {rule!r} is not for chain {name}")
                if "-j" in words:
                    target = words[words.index("-j") + 1]
                    if target.startswith("WEFT-") and target not in chains and \
                            target not in current:
                        raise IptablesError(f"rule {rule!r} jumps to missing chain {target}")
            current[name] = list(rules)
        for jump in jumps:
            self.ensure_jump(jump)
        for name in delete:
            referenced = any(f"-j {name}" in r for c, rules in current.items() if c != name
                             and c not in delete for r in rules)
            if referenced:
                raise IptablesError(f"chain {name} is still referenced")
            current.pop(name, None)

    def ensure_jump(self, jump: Jump) -> bool:
        rules = self.tables.setdefault(jump.table, {}).setdefault(jump.chain, [])
        rule = f"-A {jump.chain} " + " ".join(_quote(jump.spec()))
        if rule in rules:
            return False
        if jump.first:
            rules.insert(0, rule)
        else:
            rules.append(rule)
        return True

    def remove_jump(self, jump: Jump) -> bool:
        rules = self.tables.get(jump.table, {}).get(jump.chain, [])
        rule = f"-A {jump.chain} " + " ".join(_quote(jump.spec()))
        if rule not in rules:
            return False
        rules[:] = [r for r in rules if r != rule]
        return True

    def chains(self, table: str) -> dict[str, list[str]]:
        return {name: list(rules) for name, rules in self.tables.get(table, {}).items()}


def _quote(words: list[str]) -> list[str]:
    return [f'"{w}"' if " " in w else w for w in words]


def _restore_failure(stderr: str, text: str) -> str:
    """The error, and the lines around the one iptables-restore names (as kube-proxy logs)."""
    message = f"iptables-restore failed: {stderr.strip()}"
    for word in stderr.replace(":", " ").split():
        if word.isdigit():
            number = int(word)
            lines = text.splitlines()
            around = lines[max(0, number - 3):number + 2]
            return message + "\n  near: " + "\n  near: ".join(around)
    return message
