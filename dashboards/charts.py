"""Charts more than one page draws."""

import altair as alt
import pandas as pd


def interval_chart(
    rows: list[dict], y: str, *, x: str = "difference", title: str = "candidate - baseline"
) -> alt.LayerChart:
    """Each row's ``x`` as a point on its interval (``low`` to ``high``), one line per ``y``
    value, beside a dashed rule at 0."""
    base = alt.Chart(pd.DataFrame(rows)).encode(y=alt.Y(f"{y}:N", title=None, sort=None))
    zero = alt.Chart(pd.DataFrame({"x": [0]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    return alt.layer(
        zero,
        base.mark_rule().encode(x=alt.X("low:Q", title=title), x2="high:Q"),
        base.mark_point(filled=True).encode(x=f"{x}:Q"),
    )
