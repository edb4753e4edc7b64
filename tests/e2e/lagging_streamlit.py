"""`streamlit run` with a lagging event loop, for test_clicks_e2e.py: every event a ScriptRunner
sends its session (deltas, run started, run finished) reaches the session's event loop
$BIASLENS_EVENT_LAG_S seconds late, in order, as on a loaded server whose loop is behind.
That makes the window in which a rerun request meets a runner that has finished but whose
output is not yet delivered (core/ui/context.py ``deliver_finished_runs``) as wide as the lag."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Any

from streamlit.runtime.app_session import AppSession

LAG_S = float(os.environ.get("BIASLENS_EVENT_LAG_S", "1.0"))
_late: queue.Queue[tuple[float, Any]] = queue.Queue()
_on_event = AppSession._on_scriptrunner_event


def _deliver() -> None:
    while True:
        due, send = _late.get()
        time.sleep(max(0.0, due - time.monotonic()))
        send()


def _lagging(session: AppSession, *args: Any, **kwargs: Any) -> None:
    _late.put((time.monotonic() + LAG_S, lambda: _on_event(session, *args, **kwargs)))


AppSession._on_scriptrunner_event = _lagging  # type: ignore[method-assign]
threading.Thread(target=_deliver, daemon=True).start()

if __name__ == "__main__":
    from streamlit.web.cli import main

    sys.exit(main())
