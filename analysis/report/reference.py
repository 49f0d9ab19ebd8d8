"""The study's numbers (Voita, Sennrich and Titov 2019, read off the blog post's figures as listed in
METHODS.md §3–§7), drawn beside this run's curves and quoted in the claim table.

The study's analysed stack has 6 layers. A run with another depth L sees them at relative depth:
study layer l is drawn at l * L / 6 (`scaled_layers`), and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass

STUDY_LAYERS = 6


@dataclass(frozen=True)
class Curve:
    """Values of the study at some of its layers (two points = only the endpoints were given)."""

    layers: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.values) or len(self.layers) < 2:
            raise ValueError(f"a reference curve needs >= 2 (layer, value) points: {self}")


def _full(first: int, *values: float) -> Curve:
    return Curve(tuple(range(first, first + len(values))), tuple(values))


def _ends(first: float, last: float, first_layer: int = 1) -> Curve:
    return Curve((first_layer, STUDY_LAYERS), (first, last))


# §3 mutual information (nats, plug-in estimate; the study did not subtract a chance level)
MI: dict[tuple[str, str], Curve] = {
    ("mt", "input"): _full(0, 5.21, 5.21, 5.20, 5.10, 4.94, 4.76, 4.47),
    ("lm", "input"): _full(0, 5.30, 5.28, 5.22, 5.05, 4.81, 4.47, 3.97),
    ("mlm", "input"): _full(0, 5.21, 5.21, 5.18, 5.04, 4.93, 4.99, 5.10),
    ("lm", "output"): _ends(1.82, 2.35, first_layer=0),
    ("mlm", "input_masked"): _ends(6.90, 0.93, first_layer=0),
    ("mlm", "output"): _ends(0.72, 2.38, first_layer=0),
}

# §4 PWCCA distance between tasks at layers 1..6; keys are sorted objective pairs
PWCCA: dict[tuple[str, str], Curve] = {
    ("mlm", "mt"): _full(1, .42, .43, .44, .45, .47, .54),
    ("lm", "mt"): _full(1, .45, .48, .50, .52, .56, .60),
    ("lm", "mlm"): _full(1, .41, .44, .46, .49, .52, .60),
}
PWCCA_SEED_BASELINE = (0.26, 0.37)  # range of the same-objective / different-seed distances

# §5 amount of change (PWCCA between adjacent layers, all tokens), MT's first and last transition
CHANGE: dict[str, Curve] = {"mt": _ends(.064, .039)}

# §6 amount of influence at layer 1, MT: rarest bucket vs the others
INFLUENCE_MT_LAYER1 = {"rarest": 0.006, "others_at_most": 0.002}

# §7 nearest neighbours, layers 1 -> 6
NEIGHBOURS: dict[tuple[str, str], Curve] = {
    ("mt", "identity"): _ends(.99, .915), ("lm", "identity"): _ends(.99, .77),
    ("mlm", "identity"): _ends(.99, .97),
    ("mt", "position"): _ends(1.3, 4.5), ("lm", "position"): _ends(2.7, 7.8),
    ("mlm", "position"): _ends(2.4, 8.0),
    ("lm", "left_token"): _ends(.37, .25), ("lm", "right_token"): _ends(.13, .16),
}


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The key of an objective pair in PWCCA (order-free)."""
    return (a, b) if a <= b else (b, a)


def scaled_layers(curve: Curve, n_layers: int) -> list[float]:
    """Where the study's layers fall on this run's layer axis 0..n_layers (relative depth)."""
    return [layer * n_layers / STUDY_LAYERS for layer in curve.layers]
