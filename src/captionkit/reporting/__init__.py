"""Reports about trained runs: the HTML evaluation report, attention maps, and a table
comparing runs."""
