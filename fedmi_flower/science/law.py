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

NO_VARIATION = "no variation"
"""Why R^2 and the confidence intervals are undefined when the metric takes one value at every point."""


@dataclass(frozen=True)
class LineFit:
    """``y = intercept + slope * x`` fitted to ``n`` points, with 95% confidence intervals and R^2.

    ``undefined_because`` says why R^2 and the intervals are NaN (:data:`NO_VARIATION`:
    the metric is constant, so there is no variance for a line to explain and no scatter
    to size an interval by); None when they are defined.
    """

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    r2: float
    n: int
    undefined_because: str | None = None

    def r2_text(self, symbol: str = "R^2") -> str:
        """``"R^2 0.93"``, or ``"R^2 undefined (no variation)"`` (``symbol`` names R^2, e.g. ``"R²"`` on a figure)."""
        if self.undefined_because is not None:
            return f"{symbol} undefined ({self.undefined_because})"
        return f"{symbol} {self.r2:.2f}"

    def describe(self, x: str = "EMD") -> str:
        """``"0.81 - 0.20 EMD (slope 95% CI [-0.25, -0.15]), R^2 0.93, n 18"``.

        A constant metric reads ``"0.81 at every EMD, R^2 undefined (no variation), n 18"``:
        never an R^2 of 1 or an interval of zero width.
        """
        if self.undefined_because is not None:
            return f"{self.intercept:.2f} at every {x}, {self.r2_text()}, n {self.n}"
        sign = "-" if self.slope < 0 else "+"
        low, high = self.slope_ci
        return (
            f"{self.intercept:.2f} {sign} {abs(self.slope):.2f} {x} (slope 95% CI [{low:.2f}, {high:.2f}]), "
            f"{self.r2_text()}, n {self.n}"
        )


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit | None:
    """Least-squares line through the points where both values are defined; None with fewer than 3 or no spread in x.

    Confidence intervals use Student's t with ``n - 2`` degrees of freedom; with a
    perfect fit they are the estimate itself. When ``y`` has no spread (a metric
    constant over the runs) the line is flat at that value, and R^2 and both intervals
    are NaN with ``undefined_because`` :data:`NO_VARIATION`: R^2 is explained over total
    variance, which is zero, and a zero residual says nothing about the scatter.
    """
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return None
    xs, ys = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if np.ptp(xs) == 0:
        return None
    n = len(xs)
    # Constant up to rounding: a mean of equal values can differ from them in the last bit, and R^2 over that
    # residue would be noise.
    if np.ptp(ys) <= 1e-12 * max(1.0, float(np.abs(ys).max())):
        nan = float("nan")
        return LineFit(0.0, float(ys.mean()), (nan, nan), (nan, nan), nan, n, NO_VARIATION)
    x_mean = xs.mean()
    sxx = float(((xs - x_mean) ** 2).sum())
    slope = float(((xs - x_mean) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * x_mean)
    residual = ys - (intercept + slope * xs)
    sse = float((residual**2).sum())
    sst = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst
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
