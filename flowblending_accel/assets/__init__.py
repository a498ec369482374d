"""Data shipped with the package: digit bitmaps and the trained demo pair."""
