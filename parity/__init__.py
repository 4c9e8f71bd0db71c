"""parity: prove (or disprove) that two LLM inference backends behave the same for RL.

The Python API (parity.api): `parity.check(...) -> RunResult` runs scenarios as `parity check`
does; `parity.judge(FILE, ...)` judges a trainer's per-token dump as `parity judge` does.
"""

from parity.api import check, judge  # noqa: F401, E402
from parity.run.results import RunResult  # noqa: F401, E402
from parity.version import __version__  # noqa: F401  (first: every module may read it)
