"""The schedules the demo compares, by name (no torch: the command line reads them for --help)."""

from ..core.schedule import PAPER_SCHEDULE

SCHEDULES = {  # the paper's allocations: LSS = small from 40 %, SLL = small for the first 20 % of 50 steps
    "LLL": "L100",
    "LSL": PAPER_SCHEDULE,
    "LSS": "L40-S60",
    "SLL": "S20-L80",
    "SSS": "S100",
}
