"""`parity bisect`: delta debugging (ddmin) over the differences between a good and a bad engine
setting, one search or one per scenario (--each)."""
