"""One way to show a number: parameters, MACs, sizes and durations as every page and command writes them."""
from __future__ import annotations

SI = (("G", 1e9), ("M", 1e6), ("k", 1e3))


def params_text(n: int) -> str:
    """Parameters in full, 4,978,810: the budget is counted to the last one."""
    return f"{n:,}"


def si_text(n: float, unit: str = "") -> str:
    """Three figures with an SI prefix: 1.18 G, 40.8 MB, 512 B."""
    for prefix, size in SI:
        if n >= size:
            return f"{n / size:.3g} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def macs_text(n: float) -> str:
    """Multiply-accumulates: 1.18 G, 40.8 M, 512."""
    return si_text(n)


def rate_text(per_second: float) -> str:
    """A speed such as images/s: whole numbers from 10 up (1,234), two figures below (0.95, 4.2)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def bytes_text(n: float) -> str:
    """A size in bytes, in powers of 1,000: 170 MB, 2.15 GB, 512 B."""
    return si_text(n, "B")


def duration_text(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 3 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def duration_of_text(done: float, whole: float) -> str:
    """How much of a duration is done, never reading as all of it before it is: 86 s of 2 min, 1.6 min of 2 min."""
    done_text, whole_text = duration_text(done), duration_text(whole)
    if done < whole and done_text == whole_text:
        done_text = f"{done / 60:.1f} min" if done >= 90 else f"{done:.1f} s"
    return f"{done_text} of {whole_text}"


def significant(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant figures, for a value a search drew (lr 0.12524567764709546 -> 0.125)."""
    return float(f"{x:.{digits}g}") if x else x


def margin_text(over: int) -> str:
    """How far a design is from its parameter budget, given its parameters over it (negative: under)."""
    return f"{params_text(over)} over budget" if over > 0 else f"{params_text(-over)} to spare"


def epoch_text(epoch: float) -> str:
    """An epoch count or position: 24.4564 -> "24.5" (a time budget ends within an epoch), 30.0 -> "30"."""
    return f"{epoch:.0f}" if epoch == int(epoch) else f"{epoch:.1f}"


def epochs_done_text(done: float, epochs: int | None, time_limit: float | None, unit: bool = False) -> str:
    """Epochs trained against the run's length: "16 of 30" (" epochs" with `unit`), or, for a time-budgeted
    run, "24.5 in a time budget of 30 min"."""
    if time_limit:
        return f"{epoch_text(done)}{' epochs' if unit else ''} in a time budget of {duration_text(time_limit)}"
    return f"{epoch_text(done)} of {epochs}{' epochs' if unit else ''}"


def points_change_text(points: float, against: str) -> str:
    """A change in accuracy points against something, as a metric's delta: "+0.35 points vs fp32"; a change that
    rounds to nothing is "no change vs fp32", never "-0.00"."""
    return f"no change vs {against}" if round(points, 2) == 0 else f"{points:+.2f} points vs {against}"
