"""Learning-rate robustness reports of a sweep: analyze(rows) -> dict, write_report(...) -> paths."""

from reports.robustness import analyze
from reports.render import write_report

__all__ = ["analyze", "write_report"]
