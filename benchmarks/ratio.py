"""How every benchmark ends: ours, the baseline measured in the same run, and their ratio on the last line."""

from __future__ import annotations


def report(header: str, ours: tuple[str, float], baseline: tuple[str, float], unit: str, ratio_name: str) -> float:
    """Print ``header``, the two measurements (in ``unit``) and ``ours / baseline`` last; return that ratio."""
    print(header)
    for label, value in (baseline, ours):
        print(f"{label}: {value:,.2f} {unit}" if value < 100 else f"{label}: {value:,.0f} {unit}")
    ratio = ours[1] / baseline[1]
    print(f"ratio {ratio_name}: {ratio:.2f}")
    return ratio
