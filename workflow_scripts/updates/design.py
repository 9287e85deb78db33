"""What each targeted-update experiment is: where it starts, what it learns, what it must keep.

One fold has these slices of the facts (disjoint, seeded by the fold): A (old facts), B (new facts),
C (new facts, as many as B), K (facts the pre-trained model already knows), plus the dissonance-
awareness set H whose fine-tune gives the historical usage. Two full fine-tunes build the stages:
pre-trained -> A (model "A", usage of A) -> B (model "AB", usage of B).

Rules and scripts both read :data:`EXPERIMENTS`, so an experiment is defined in this one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Where usage comes from: "A" = the stage-A fine-tune (pre-trained -> A), "B" = stage B (A -> B),
# "H" = the history fine-tune (pre-trained -> H).
USAGE_SOURCES = ("A", "B", "H")


@dataclass(frozen=True)
class Experiment:
    id: str
    title: str
    start: str  # model the arms start from: "base", "A" (after stage A) or "AB" (after stage B)
    old: str  # slice whose facts are the old knowledge to keep
    new: str  # slice the arms learn
    target: str  # "target_true", or "target_new" for counterfacts (dissonant)
    known: str  # which facts count as known just before the update: "base", "A" or "AB"
    usage: dict[str, str | None] = field(default_factory=dict)  # strategy input -> usage source
    arms: str = ""  # config block under `updates` with strategies, k and epochs
    oracle_new_usage: bool = False  # "new" usage comes from a full pass on the update's own data

    @property
    def slug(self) -> str:
        return self.id.replace(".", "_")


EXPERIMENTS: dict[str, Experiment] = {
    "2.1": Experiment(
        "2.1", "non-dissonant update: model A learns new facts B", start="A", old="A", new="B",
        target="target_true", known="A", usage={"old": "A", "new": "B", "history": "H"}, arms="exp_2_1",
        oracle_new_usage=True,
    ),
    "2.2": Experiment(
        "2.2", "lottery tickets: the pre-trained model learns A with neurons chosen by H's usage",
        start="base", old="K", new="A", target="target_true", known="base",
        usage={"old": None, "new": "A", "history": "H"}, arms="exp_2_2", oracle_new_usage=True,
    ),
    "3.1": Experiment(
        "3.1", "dissonant update: model AB learns counterfact(B)", start="AB", old="A", new="B",
        target="target_new", known="AB", usage={"old": "A", "new": "B", "history": "H"}, arms="exp_3",
    ),
    "3.3": Experiment(
        "3.3", "matched non-dissonant control: model AB learns new facts C (|C| = |B|)", start="AB", old="A",
        new="C", target="target_true", known="AB", usage={"old": "A", "new": "B", "history": "H"}, arms="exp_3",
    ),
}


def experiment(id_or_slug: str) -> Experiment:
    key = id_or_slug.replace("_", ".")
    try:
        return EXPERIMENTS[key]
    except KeyError:
        raise ValueError(f"unknown experiment {id_or_slug!r}; known: {sorted(EXPERIMENTS)}") from None


def setting_label(lr_ratio: float, epochs: int) -> str:
    """The folder of an arm's settings, e.g. 'lr1_e5' or 'lr0.5_e10'."""
    ratio = format(float(lr_ratio), "g")
    return f"lr{ratio}_e{int(epochs)}"


def parse_setting(label: str) -> tuple[float, int]:
    lr, _, epochs = label.partition("_e")
    if not lr.startswith("lr") or not epochs.isdigit():
        raise ValueError(f"not an arm setting label: {label!r} (expected e.g. 'lr1_e5')")
    return float(lr[2:]), int(epochs)


def k_label(k: float) -> str:
    """k as it appears in file names: a count ('2000') or a fraction in plain decimals ('0.00005')."""
    if float(k) == int(k) and k >= 1:
        return str(int(k))
    return format(k, ".12f").rstrip("0")


def parse_k(text: str) -> int | float | None:
    """File-name k -> k: 'all' (full, LoRA), an integer count, or a fraction such as '0.05'."""
    if text == "all":
        return None
    return float(text) if "." in text else int(text)


def arms(updates: dict, experiment_id: str) -> list[tuple[str, str, str]]:
    """(setting, strategy, k label) of every arm of one experiment, sweeps included, no duplicates.

    ``updates`` is the validated ``updates`` config block."""
    exp = experiment(experiment_id)
    block = updates[exp.arms]

    def product(strategies, ks, setting):
        out = []
        for strategy in strategies:
            if strategy in ("full", "lora"):
                out.append((setting, strategy, "all"))
            else:
                out.extend((setting, strategy, k_label(k)) for k in ks)
        return out

    result = product(block["strategies"], block["k"], setting_label(1, block["epochs"]))
    sweeps = updates.get("sweeps", {})
    if exp.id == "2.1":
        for ratio in sweeps.get("lr_ratios", []):
            result += product(sweeps["strategies"], sweeps["k"], setting_label(ratio, block["epochs"]))
    if exp.id in ("3.1", "3.3"):
        for epochs in sweeps.get("epochs", []):
            result += product(sweeps["strategies"], sweeps["k"], setting_label(1, epochs))
    return list(dict.fromkeys(result))
