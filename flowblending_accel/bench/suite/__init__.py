"""The GPU evidence suite in short, resumable parts: each part one device call, each section one process
with its own time box, every measured row one JSON line written as it is measured.

* :mod:`.plan`: the parts, sections and rows of the ``gpu`` suite and of its CPU ``rehearsal``;
* :mod:`.costs`: the cost model (FLOPs counted on the ``meta`` device, stated throughputs), memory estimates;
* :mod:`.parts`: a part's estimate, then each section in a subprocess; crashes, out-of-memory and hangs
  recorded as failed rows;
* :mod:`.worker` and :mod:`.measure`: one section, row by row, into the part file (:mod:`.journal`);
* :mod:`.summary` and :mod:`.render`: any set of part files into suite.json, suite.md and suite.png.
"""

from .plan import PART_SECONDS, SUITES, Part, Section, Suite, SuiteRow, SuiteWorkload, suite_named

__all__ = ["PART_SECONDS", "SUITES", "Part", "Section", "Suite", "SuiteRow", "SuiteWorkload", "suite_named"]
