"""`python -m parity.bench ...`: the same as `parity bench ...`."""

from parity.bench.main import main

main()
