"""The ground truths by name: the config's `truths` entries, the rules `<name>_chunk`, the `truth`
column of the correlation tables. Adding one: its module, one line here, its block in the schema."""

from __future__ import annotations

from .base import Truth
from .groups import Groups
from .lds import Lds
from .loo import LeaveOneOut
from .pbrf import Pbrf

TRUTHS: dict[str, Truth] = {truth.name: truth for truth in (LeaveOneOut(), Pbrf(), Groups(), Lds())}


def names() -> list[str]:
    return list(TRUTHS)


def get(name: str) -> Truth:
    if name not in TRUTHS:
        raise ValueError(f"truths: unknown ground truth '{name}'; known: {names()}")
    return TRUTHS[name]


def enabled(block: dict) -> list[str]:
    """A cell's `truths` (default [loo]), in registry order; ValueError naming the key for an
    unknown one."""
    chosen = list(block.get("truths", ["loo"]))
    for name in chosen:
        get(name)
    return [name for name in TRUTHS if name in chosen]


def study_enabled(config: dict, study: str) -> list[str]:
    """The union of `truths` over a study's architectures (a per-architecture
    `overrides.<arch>.truths` may add some), in registry order."""
    from ..study.grid import arch_config, study_block

    found = set()
    for arch in study_block(config, study)["architectures"]:
        found |= set(enabled(arch_config(config, study, arch)))
    return [name for name in TRUTHS if name in found]
