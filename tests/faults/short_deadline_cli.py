"""`python -m tests.faults.short_deadline_cli ARGS...`: the real deployctl CLI, with every
provider HTTP deadline cut to $FAULT_HTTP_TIMEOUT_S (default 2 s).

A fault campaign holds some requests past the client's deadline ("timeout" faults, see
`FakeApi.fail_randomly`). With the production deadlines (10 s a call, 60 s a RunPod
deploy) one such fault costs a minute and 100 trials an hour; with short ones it costs
seconds. Nothing else differs: the retry policy, the error tree and the launcher are the
production code. Only the fault suites use this entry point.
"""

from __future__ import annotations

import os
import sys

from providers import base

_LIMIT_S = float(os.environ.get("FAULT_HTTP_TIMEOUT_S", "2"))
_init = base.HttpApi.__init__


def _short_deadline_init(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    self.timeout_s = min(self.timeout_s, _LIMIT_S)


base.HttpApi.__init__ = _short_deadline_init

if __name__ == "__main__":
    from orchestrator.cli import main

    sys.exit(main(sys.argv[1:]))
