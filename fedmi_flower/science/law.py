"""The skew law: how a circuit metric changes with label skew, as a straight line with its uncertainty.

The paper leaves "a formal quantitative relationship between statistical data skew (e.g.,
EMD) and the rate of IoU degradation" to future work (section 4). Over the runs of a skew
sweep, every run is one point (its mean label EMD, :func:`fedmi_flower.science.metrics.mean_label_emd`,
against a metric of its final round); :func:`fit_line` fits ``metric = intercept + slope * EMD``
by ordinary least squares and gives 95% confidence intervals (Student's t) and R^2. A
line is the simplest relation that can be refuted; the report shows the points beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LineFit:
    """``y = intercept + slope * x`` fitted to ``n`` points, with 95% confidence intervals and R^2."""

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    r2: float
    n: int

    def describe(self, x: str = "EMD") -> str:
        """``"0.81 - 0.20 EMD (slope 95% CI [-0.25, -0.15]), R^2 0.93, n 18"``."""
        sign = "-" if self.slope < 0 else "+"
        low, high = self.slope_ci
        return (
            f"{self.intercept:.2f} {sign} {abs(self.slope):.2f} {x} (slope 95% CI [{low:.2f}, {high:.2f}]), "
            f"R^2 {self.r2:.2f}, n {self.n}"
        )


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit | None:
    """Least-squares line through the points where both values are defined; None with fewer than 3 or no spread in x.

    Confidence intervals use Student's t with ``n - 2`` degrees of freedom; with a
    perfect fit they are the estimate itself.
    """
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return None
    xs, ys = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if np.ptp(xs) == 0:
        return None
    n = len(xs)
    x_mean = xs.mean()
    sxx = float(((xs - x_mean) ** 2).sum())
    slope = float(((xs - x_mean) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * x_mean)
    residual = ys - (intercept + slope * xs)
    sse = float((residual**2).sum())
    sst = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    s2 = sse / (n - 2)
    t = float(stats.t.ppf(0.975, n - 2))
    se_slope = math.sqrt(s2 / sxx)
    se_intercept = math.sqrt(s2 * (1.0 / n + x_mean**2 / sxx))
    return LineFit(
        slope,
        intercept,
        (slope - t * se_slope, slope + t * se_slope),
        (intercept - t * se_intercept, intercept + t * se_intercept),
        r2,
        n,
    )
