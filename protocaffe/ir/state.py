"""NetState filtering: which layers of a NetParameter exist for one (phase, level, stages).

Caffe's FilterNet semantics: a layer without include rules is kept unless one of its exclude
rules matches; a layer with include rules is kept only if one of them matches. A rule matches
when every condition it sets holds (phase equal, level within [min_level, max_level], all of
`stage` present, none of `not_stage` present). The net's own `state` message supplies the
defaults; like `caffe.Net(..., phase, level, stages)`, explicit arguments override the phase
and level and add to the stages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

TRAIN, TEST = 0, 1
PHASES = {"TRAIN": TRAIN, "TEST": TEST}


class NetState(NamedTuple):
    phase: int = TEST
    level: int = 0
    stages: frozenset[str] = frozenset()

    @property
    def phase_name(self) -> str:
        return phase_name(self.phase)


def phase_name(phase: int) -> str:
    return "TRAIN" if phase == TRAIN else "TEST"


def parse_phase(phase: str | int) -> int:
    if isinstance(phase, int):
        if phase not in (TRAIN, TEST):
            raise ValueError(f"phase must be TRAIN (0) or TEST (1), not {phase}")
        return phase
    key = phase.upper()
    if key not in PHASES:
        raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")
    return PHASES[key]


def net_state(
    net: Any,
    phase: str | int | None = None,
    stages: Iterable[str] = (),
    level: int | None = None,
) -> NetState:
    """The effective state: the net's `state` field, overridden/extended by the arguments."""
    declared = net.state if net.HasField("state") else None
    eff_phase = TEST
    if phase is not None:
        eff_phase = parse_phase(phase)
    elif declared is not None and declared.HasField("phase"):
        eff_phase = declared.phase
    eff_level = level if level is not None else (declared.level if declared is not None else 0)
    declared_stages = list(declared.stage) if declared is not None else []
    return NetState(eff_phase, eff_level, frozenset([*declared_stages, *stages]))


def rule_matches(state: NetState, rule: Any) -> bool:
    """Caffe's StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stages for stage in rule.stage):
        return False
    return not any(stage in state.stages for stage in rule.not_stage)


def layer_included(state: NetState, layer: Any) -> bool:
    """Whether `layer` (a LayerParameter) exists in `state`. Callers reject include+exclude."""
    if len(layer.include):
        return any(rule_matches(state, rule) for rule in layer.include)
    return not any(rule_matches(state, rule) for rule in layer.exclude)
