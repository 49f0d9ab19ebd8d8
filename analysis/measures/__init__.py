"""One command per metric table (`python -m analysis.measures.<name>`), each over the dumps of one model or of the grid, and merge, which joins the per-model parts."""
