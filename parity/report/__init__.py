"""Reports of a run for people and machines: report.json, report.md, junit.xml, report.html
with plots, CI summaries, and `parity diff` between two runs."""
