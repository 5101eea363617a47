"""The supervision tree as plugins declare it (`register_children`): who goes where, after whom.

A plugin registers `Child` entries (one actor, or a supervisor of its own, under a parent) and
`Group` entries (a supervisor that several plugins put children into, e.g. `data_sup`).
Siblings start in the order their `after`/`before` constraints give, stop in reverse; a name
in `after`/`before` that is not a sibling in this process (its plugin is not active here) is
ignored. Unconstrained siblings keep the order in which they were registered. The same group
may be declared by several plugins, identically.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from brain.actors.supervisor import ChildSpec, Strategy, Supervisor
from brain.errors import PluginError

__all__ = ["Child", "Group", "build_tree"]


@dataclass(frozen=True)
class Child:
    """One child of a group ("" is the root): how to start it and whom it starts after."""

    spec: ChildSpec
    parent: str = ""
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """A supervisor whose children are registered by the plugins (possibly several)."""

    id: str
    parent: str = ""
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()


def build_tree(entries: Iterable[Child | Group]) -> list[ChildSpec]:
    """The root's children in start order, each group a supervisor of its own ordered children."""
    groups: dict[str, Group] = {}
    members: dict[str, list[Child | Group]] = {"": []}
    for entry in entries:
        if isinstance(entry, Group):
            known = groups.get(entry.id)
            if known is not None:
                if known != entry:
                    raise PluginError(f"supervisor {entry.id!r} is declared twice, differently: {known} and {entry}")
                continue
            groups[entry.id] = entry
            members.setdefault(entry.id, [])
        members.setdefault(entry.parent, []).append(entry)
    unknown = sorted(set(members) - set(groups) - {""})
    if unknown:
        raise PluginError(f"children registered under supervisors nobody declared: {', '.join(unknown)}")
    return _specs("", members, groups)


def _specs(parent: str, members: dict[str, list[Child | Group]], groups: dict[str, Group]) -> list[ChildSpec]:
    specs: list[ChildSpec] = []
    for entry in _ordered(parent, members[parent]):
        if isinstance(entry, Child):
            specs.append(entry.spec)
        else:
            specs.append(_group_spec(entry, _specs(entry.id, members, groups)))
    return specs


def _group_spec(group: Group, children: list[ChildSpec]) -> ChildSpec:
    return ChildSpec(
        id=group.id,
        # A supervisor waits for its children, each bounded by its own timeout (OTP).
        shutdown_timeout=math.inf,
        start=lambda link: Supervisor.start(
            link=link, name=group.id, strategy=group.strategy, children=children,
            max_restarts=group.max_restarts, max_seconds=group.max_seconds,
        ),
    )


def _name(entry: Child | Group) -> str:
    return entry.spec.id if isinstance(entry, Child) else entry.id


def _ordered(parent: str, siblings: Sequence[Child | Group]) -> list[Child | Group]:
    """Siblings in an order that honours every after/before (a stable topological sort)."""
    index = {}
    for i, entry in enumerate(siblings):
        name = _name(entry)
        if name in index:
            raise PluginError(f"two children named {name!r} under {parent or 'the root'}")
        index[name] = i
    needs: list[set[int]] = [set() for _ in siblings]  # needs[i]: who must start before i
    for i, entry in enumerate(siblings):
        needs[i] |= {index[n] for n in entry.after if n in index}
        for n in entry.before:
            if n in index:
                needs[index[n]].add(i)
    waiting = [len(n) for n in needs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j, required in enumerate(needs):
            if i in required:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) != len(siblings):
        stuck = sorted(_name(siblings[i]) for i in range(len(siblings)) if i not in order)
        raise PluginError(f"the start order under {parent or 'the root'} has a cycle among: {', '.join(stuck)}")
    return [siblings[i] for i in order]
