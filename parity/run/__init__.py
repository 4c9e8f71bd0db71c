"""Running scenarios: scenario files parsed and validated, engines planned, started once and
driven, references shared, each scenario judged by its category, faults contained."""
