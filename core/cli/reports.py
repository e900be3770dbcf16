"""`python -m core report`: runs written up as one HTML file, as Markdown with its images, or as LaTeX tables and
PDF charts for a paper."""
from __future__ import annotations

from core.cli.common import emit
from core.report.document import check_out
from core.runs.run import Run


def cmd_report(args) -> int:
    fmt = args.format or ("md" if args.out.endswith(".md") else "html")
    runs = [Run.at(name).intact() for name in args.runs]
    check_out(args.out, fmt)  # before the slow part: a wrong name is said at once

    from core.report.report import write_report  # torch, Altair and vl-convert: only for this command

    emit(write_report(runs, args.out, fmt, args.data, args.mistakes))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="a report to hand in: hyperparameters, results, curves, confusion matrix, "
                                      "mistakes and record of one run, or several compared")
    p.add_argument("runs", nargs="+", metavar="RUN", help="runs/NAME; several make one comparison")
    p.add_argument("--out", required=True, metavar="report.html|report.md|DIR")
    p.add_argument("--format", choices=("html", "md", "latex"),
                   help="html: one self-contained file (default); md: Markdown with its PNGs in OUT_images/ beside it "
                        "(default for .md); latex: the folder OUT with tables.tex (booktabs) and every chart as a PDF, "
                        "for a paper")
    p.add_argument("--data", help="test data to evaluate the best checkpoints on (default: each run's own data if it "
                                  "is on this machine, else the built-in slice)")
    p.add_argument("--mistakes", type=int, default=20, help="how many of the most confident mistakes to show")
    p.set_defaults(func=cmd_report)
