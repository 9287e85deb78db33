"""Typed editing hyperparameters, with the defaults of the spec (editing-merging.md §0, §1.5, §9.6)
except where speed on two CPU cores asks for fewer steps, templates or covariance tokens (said per
field; the registered methods in ``methods/editing.py`` use the same defaults).

Layer defaults scale the reference windows to the model's depth: llama-style [4..8] of 30 blocks
(ROME 6), GPT-2 [2..5] of 12 (ROME 4); a model of at most 4 blocks edits every block but the last
(at least block 0), with ROME at the last of those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence, Union

# family -> (reference depth, MEMIT window, ROME layer)
REFERENCE_LAYERS = {"llama": (30, (4, 5, 6, 7, 8), 6), "gpt2": (12, (2, 3, 4, 5), 4)}


@dataclass(frozen=True)
class TargetSettings:
    """The z*/v* optimisation (§1.5)."""

    steps: int = 8  # at most steps - 1 Adam updates (the reference's loop); reference 20
    lr: float = 1.0  # reference 0.5 (with 20 steps); 8 steps at 1.0 edit SmolLM2 as well, in ~40 % of the time
    weight_decay: float = 0.5  # times ‖δ‖ / ‖h‖² (norm, not squared, as the reference)
    kl_factor: float = 0.0625
    clamp: float = 0.75  # ‖δ‖ <= clamp · ‖h‖ (MEMIT 0.75 on the residual stream; ROME 4 on the MLP output)
    early_stop: float = 0.05  # an edit stops once its loss is below this
    batch: int = 32  # edits optimised together (rows are independent; only memory and speed change)

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.clamp <= 0 or self.batch < 1:
            raise ValueError(f"invalid target settings: {self}")
        if self.weight_decay < 0 or self.kl_factor < 0:
            raise ValueError(f"weight_decay and kl_factor must be >= 0: {self}")


@dataclass(frozen=True)
class TemplateSettings:
    counts: tuple[tuple[int, int], ...] = ((5, 1),)  # (length in tokens, how many); MEMIT ((10, 5),), ROME ((5, 10), (10, 10))
    seed: int = 0
    top_k: int = 5
    openers: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")

    def __post_init__(self):
        object.__setattr__(self, "counts", parse_counts(self.counts))
        object.__setattr__(self, "openers", tuple(self.openers))


@dataclass(frozen=True)
class CovarianceSettings:
    corpus: str = "gensim_wiki"
    tokens: int = 20_000  # spec default 100k; 20k (13 x d_k for SmolLM2) keeps a start model under ~30 s
    max_len: int = 256
    seed: int = 0  # for sampled corpora
    batch_size: int = 8  # windows per forward pass
    min_tokens_per_dim: float = 1.0  # refuse fewer than this x d_k tokens

    def __post_init__(self):
        if self.tokens < 1 or self.max_len < 2 or self.batch_size < 1:
            raise ValueError(f"invalid covariance settings: {self}")


@dataclass(frozen=True)
class RomeHParams:
    layer: int
    targets: TargetSettings = field(default_factory=lambda: TargetSettings(clamp=4.0))
    key: str = "original"  # "original": u from the template-mean key, v from the bare key; "homogeneous": r-ROME
    mom2_adjustment: bool = True  # u = C⁻¹k (ROME); False gives u = k (not ROME: EasyEdit's llama setting)
    batch_targets: bool = True  # v* of all edits in one batch on the start model (a deviation); False: per edit

    def __post_init__(self):
        if self.key not in ("original", "homogeneous"):
            raise ValueError(f"rome key must be 'original' or 'homogeneous', got {self.key!r}")


Lambda = Union[float, str]


@dataclass(frozen=True)
class MemitHParams:
    layers: tuple[int, ...]
    targets: TargetSettings = field(default_factory=TargetSettings)
    lambda_: Lambda = "auto"  # λ (mom2_update_weight), or "auto": per layer, median kᵀC⁻¹k / s_target
    s_target: float = 1.0  # the median s = kᵀ(λC)⁻¹k that "auto" calibrates to (§1.7)
    mode: str = "sequential"  # "sequential" (kmeng01) or "frozen" (CollabEdit: keys, residuals from the unedited model)
    residual_split: str = "remaining"  # frozen mode: R/(E-i) at the i-th layer ("remaining") or R/E ("equal")
    calibration_facts: int = 64  # fixed fact prompts (starter facts) whose keys calibrate "auto"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"MEMIT layers must be distinct and increasing, got {self.layers}")
        if self.mode not in ("sequential", "frozen"):
            raise ValueError(f"MEMIT mode must be 'sequential' or 'frozen', got {self.mode!r}")
        if self.residual_split not in ("remaining", "equal"):
            raise ValueError(f"residual_split must be 'remaining' or 'equal', got {self.residual_split!r}")
        if self.mode == "sequential" and self.residual_split != "remaining":
            raise ValueError("sequential MEMIT re-measures the residual at every layer and writes R/(E-i); "
                             "residual_split 'equal' is for the frozen mode")
        if isinstance(self.lambda_, str):
            if self.lambda_ != "auto":
                object.__setattr__(self, "lambda_", float(self.lambda_))
        if not (self.lambda_ == "auto" or float(self.lambda_) > 0):
            raise ValueError(f"lambda must be positive or 'auto', got {self.lambda_!r}")
        if self.s_target <= 0:
            raise ValueError(f"s_target must be positive, got {self.s_target}")


def parse_counts(counts) -> tuple[tuple[int, int], ...]:
    """Template counts from pairs or a string "10x5" / "5x10+10x10" (length x how many); "" = none."""
    if isinstance(counts, str):
        counts = counts.strip()
        if counts in ("", "0", "none"):
            return ()
        pairs = []
        for part in counts.split("+"):
            m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
            if not m:
                raise ValueError(f"template counts must look like '10x5' or '5x10+10x10', got {counts!r}")
            pairs.append((int(m.group(1)), int(m.group(2))))
        return tuple(pairs)
    out = tuple((int(a), int(b)) for a, b in counts)
    if any(a < 1 or b < 0 for a, b in out):
        raise ValueError(f"template counts need length >= 1 and n >= 0, got {out}")
    return out


def _family(model) -> str:
    from workflow_scripts.models.architectures import layout_for

    return layout_for(model).family


def default_layers(model) -> tuple[int, ...]:
    """MEMIT's layers for this model: the family's reference window scaled to the model's depth."""
    from workflow_scripts.editing.site import n_blocks

    n = n_blocks(model)
    if n <= 4:
        return tuple(range(max(1, n - 1)))
    depth, window, _ = REFERENCE_LAYERS.get(_family(model), REFERENCE_LAYERS["llama"])
    if n == depth:
        return window
    first = max(0, round(window[0] * n / depth))
    width = max(1, min(len(window), round(len(window) * n / depth) if n < depth else len(window)))
    last = min(n - 2, first + width - 1)
    return tuple(range(min(first, last), last + 1))


def default_rome_layer(model) -> int:
    from workflow_scripts.editing.site import n_blocks

    n = n_blocks(model)
    if n <= 4:
        return max(0, n - 2)
    depth, _, layer = REFERENCE_LAYERS.get(_family(model), REFERENCE_LAYERS["llama"])
    return min(n - 2, max(0, round(layer * n / depth)))


def parse_layers(spec: str | int | Sequence[int] | None, model) -> tuple[int, ...]:
    """Layers from "default"/""/None (the family default), "4-8", "4,5,6", a list, or "file:<path>":
    the ``memit_layers`` of a layer choice written by the ``editing_layers`` rule
    (``results/editing/layer_choice.json``; make it first, its later changes do not rerun runs)."""
    import json
    from pathlib import Path

    from workflow_scripts.editing.site import n_blocks

    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "default")):
        return default_layers(model)
    if isinstance(spec, str) and spec.startswith("file:"):
        path = Path(spec[len("file:"):])
        if not path.is_file():
            raise ValueError(f"layers {spec!r}: no such file (make it with `snakemake {path}`)")
        choice = json.loads(path.read_text(encoding="utf-8"))
        if "memit_layers" not in choice:
            raise ValueError(f"layers {spec!r}: the file has no 'memit_layers'")
        spec = choice["memit_layers"]
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, str):
        layers = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                layers += list(range(int(m.group(1)), int(m.group(2)) + 1))
            elif part.isdigit():
                layers.append(int(part))
            else:
                raise ValueError(f"layers must look like '4-8' or '4,5,6', got {spec!r}")
    else:
        layers = [int(x) for x in spec]
    n = n_blocks(model)
    if not layers or any(not 0 <= x < n for x in layers):
        raise ValueError(f"layers {layers} must lie within the model's {n} blocks")
    return tuple(sorted(set(layers)))
