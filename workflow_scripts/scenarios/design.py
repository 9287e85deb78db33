"""Named scenarios: where an update starts, what it learns, with which target, what it must keep.

One fold has these slices of the facts (disjoint, seeded by the fold): A (old facts), B (new facts),
C (new facts, as many as B), D (further new facts, ``updates.sizes.D``, 0 unless a scenario needs it),
V (a validation slice of new facts for learning-rate tuning, ``updates.sizes.V``, never reported),
K (facts the pre-trained model already knows), E (further facts it knows, ``updates.sizes.E``, 0 unless
a scenario edits them: the collaborative-editing counterfacts), plus the history set H
whose fine-tune gives the historical usage. Two full fine-tunes build the shared checkpoints:
pre-trained ("base") -> A (checkpoint "A", usage of A) -> B (checkpoint "AB", usage of B).

A scenario is named for what it is; the original study's section number is kept as ``paper``, a
label for rows and reports, never a key. Rules, run table and reports all read :data:`SCENARIOS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHECKPOINTS = ("base", "A", "AB")
USAGE_SOURCES = ("A", "B", "H")  # the stage-A fine-tune, the stage-B fine-tune, the history fine-tune
TARGETS = ("target_true", "target_new")


@dataclass(frozen=True)
class Scenario:
    name: str  # the key: config, paths, rows
    paper: str  # the original study's section ("2.1"): a label only
    title: str
    start: str  # checkpoint the update starts from: "base", "A" or "AB"
    learn: str  # slice the update learns
    target: str  # "target_true", or "target_new" (counterfacts: a dissonant update)
    keep: str  # slice whose known facts must survive
    known: str  # checkpoint whose known-table defines "known just before the update"
    usage: dict[str, str] = field(default_factory=dict)  # usage role ("old", "new", "history") -> source
    oracle_usage: tuple[str, ...] = ()  # usage roles that come from a full pass on the update's own data
    control_for: str | None = None  # the scenario this one is the matched control of
    tuning: bool = False  # a tuning scenario: its runs choose settings and are not reported as results

    def __post_init__(self):
        if self.start not in CHECKPOINTS or self.known not in CHECKPOINTS:
            raise ValueError(f"scenario {self.name}: start and known must be among {CHECKPOINTS}")
        if self.target not in TARGETS:
            raise ValueError(f"scenario {self.name}: target must be one of {TARGETS}")
        if not set(self.usage.values()) <= set(USAGE_SOURCES):
            raise ValueError(f"scenario {self.name}: usage sources must be among {USAGE_SOURCES}")

    @property
    def stage(self) -> str:
        """A short description of the update, e.g. "AB->B'" (a prime marks counterfacts)."""
        return f"{self.start}->{self.learn}" + ("'" if self.target == "target_new" else "")


def _scenarios(*items: Scenario) -> dict[str, Scenario]:
    return {s.name: s for s in items}


SCENARIOS: dict[str, Scenario] = _scenarios(
    Scenario(
        "nondissonant_update", "2.1", "checkpoint A learns new facts B (non-dissonant)",
        start="A", learn="B", target="target_true", keep="A", known="A",
        usage={"old": "A", "new": "B", "history": "H"}, oracle_usage=("new",),
    ),
    Scenario(
        "lottery", "2.2", "the pre-trained model learns A with neurons chosen by H's usage",
        start="base", learn="A", target="target_true", keep="K", known="base",
        usage={"new": "A", "history": "H"}, oracle_usage=("new",),
    ),
    Scenario(
        "dissonant_update", "3.1", "checkpoint AB learns counterfact(B) (dissonant)",
        start="AB", learn="B", target="target_new", keep="A", known="AB",
        usage={"old": "A", "new": "B", "history": "H"},
    ),
    Scenario(
        "matched_control", "3.3", "checkpoint AB learns new facts C, as many as B (the matched control)",
        start="AB", learn="C", target="target_true", keep="A", known="AB",
        usage={"old": "A", "new": "B", "history": "H"}, control_for="dissonant_update",
    ),
    Scenario(
        "false_nonconflicting", "new", "checkpoint AB learns wrong targets for facts it never knew (D, target_new)",
        start="AB", learn="D", target="target_new", keep="A", known="AB",
        usage={"old": "A", "new": "B", "history": "H"}, control_for="dissonant_update",
    ),
    Scenario(
        "collaborative_edit", "CollabEdit 4.1",
        "several clients edit the pre-trained model's known facts E with counterfacts; their edits are merged",
        start="base", learn="E", target="target_new", keep="K", known="base",
    ),
    Scenario(
        "lr_tuning", "-", "checkpoint A learns the validation slice V: each method family's learning rate is chosen here",
        start="A", learn="V", target="target_true", keep="A", known="A",
        usage={"old": "A", "new": "B", "history": "H"}, tuning=True,
    ),
)

TUNING_SCENARIO = "lr_tuning"


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {sorted(SCENARIOS)}") from None


def controlled_pairs() -> list[tuple[str, str]]:
    """(scenario, its control) pairs, e.g. ("dissonant_update", "matched_control"), in definition order."""
    return [(s.control_for, s.name) for s in SCENARIOS.values() if s.control_for]


def slice_size(sizes: dict, name: str) -> int:
    """How many facts a fold's slice has under ``updates.sizes`` (C has B's size)."""
    return {"A": sizes["A"], "B": sizes["B"], "C": sizes["B"], "D": sizes.get("D", 0), "V": sizes.get("V", 0),
            "E": sizes.get("E", 0), "K": sizes["known_old"]}[name]
