"""Circuit stitching: the clients' circuits of one class combined into one (issue 27, item 6).

The seeds' reference code (ha405/FedMI) stitches the client circuits of a class by
union, intersection or majority vote and evaluates the result on the global model.
Here the combined circuit is scored on the global weights beside each client's own
cross-evaluation (:meth:`~fedmi_flower.analysis.round_analyst.RoundAnalyst.stitched`):
a stitched circuit that works where no single client's circuit does means the
federation holds a working circuit of the class that no client's circuit is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from fedmi_flower.science.circuits import Circuit

RULES = ("union", "intersection", "majority")


def stitch(circuits: Sequence[Circuit], rule: str) -> Circuit:
    """The channels of ``circuits`` combined per site by ``rule``: in some (union), in all (intersection) or in
    more than half of them (majority)."""
    if rule not in RULES:
        raise ValueError(f"stitching rule must be one of {RULES}, got {rule!r}")
    if not circuits:
        return {}
    sites = list(dict.fromkeys(site for c in circuits for site in c))
    need = {"union": 1, "intersection": len(circuits), "majority": len(circuits) // 2 + 1}[rule]
    out: Circuit = {}
    for site in sites:
        votes = Counter(ch for c in circuits for ch in set(c.get(site, [])))
        out[site] = sorted(ch for ch, n in votes.items() if n >= need)
    return out
