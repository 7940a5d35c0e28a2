"""What a run leaves: metrics.json, CSVs, plots, report.html, tables.

Rooms: record, runfiles, tables, thumbs, webdemo, webreport, webselection, webtable. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["apply_record", "check_lines", "fit_record"], "record"),
    **dict.fromkeys(["write_discovery"], "runfiles"),
    **dict.fromkeys(["paired_difference"], "tables"),
    **dict.fromkeys(["write_front_page"], "webdemo"),
    **dict.fromkeys(["write_run_report"], "webreport"),
    **dict.fromkeys(["write_table_page"], "webtable"),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .record import apply_record, check_lines, fit_record
    from .runfiles import write_discovery
    from .tables import paired_difference
    from .webdemo import write_front_page
    from .webreport import write_run_report
    from .webtable import write_table_page
