"""Where the bot's time went in a pyinstrument session, by activity: each sample's time goes to the innermost
of the entry points below on its stack (so the Discord edit a request's acceptance makes counts as a Discord
edit, not as acceptance), the rest to "event loop and other".

The burst records it for the bot (details.profile_breakdown_s); for a saved session (Profiler's
last_session.save): `python -m bench.profile_summary FILE.pyisession`"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# (activity, class name or None, function names, path fragment or None), matched on each frame.
ACTIVITIES: tuple[tuple[str, str | None, frozenset[str], str | None], ...] = (
    ("idle: waiting for I/O in select()", None, frozenset({"select"}), "selectors.py"),
    ("discord: gateway read + event parse", "DiscordWebSocket", frozenset({"received_message"}), None),
    ("discord: app_commands dispatch", None, frozenset({"_call", "_from_interaction"}), "discord/app_commands/"),
    ("discord: ack (callback POST)", "InteractionResponse", frozenset({"defer", "send_message"}), None),
    ("discord: edits + uploads", "DiscordObserver", frozenset(), None),
    ("core: accept request (checks + DB)", "GenerationService", frozenset({"imagine"}), None),
    ("core: worker (claim, store, finish)", "Worker", frozenset(), None),
    ("provider stand-in", "StandInProvider", frozenset(), None),
    ("telegram: getUpdates + parse", None, frozenset({"polling_action_cb"}), "telegram/ext/_updater.py"),
    ("telegram: PTB dispatch", "Application", frozenset({"process_update"}), None),
    ("telegram: handler", "Handlers", frozenset(), None),
    ("telegram: sends (PTB + httpx)", None, frozenset(), "bot/adapters/telegram/observer.py"),
    ("telegram: sends (PTB + httpx)", "Sender", frozenset(), None),
    ("bench probes", None, frozenset({"loop_lag"}), "bench/"),
)
OTHER = "event loop and other"


def _activity(frame: object) -> str | None:
    function = getattr(frame, "function", "")
    path = getattr(frame, "file_path", None) or ""
    cls = getattr(frame, "class_name", None)
    for name, wanted_class, functions, fragment in ACTIVITIES:
        if wanted_class is not None and cls != wanted_class:
            continue
        if functions and function not in functions:
            continue
        if fragment is not None and fragment not in path:
            continue
        return name
    return None


def summarize(session: Any) -> dict[str, float]:
    """Seconds per activity (sampled wall time of the main thread: CPU, plus any blocking call), from a
    pyinstrument Session or a saved one's path."""
    from pyinstrument.session import Session

    if not isinstance(session, Session):
        session = Session.load(str(session))
    root = session.root_frame(trim_stem=False)
    totals: dict[str, float] = defaultdict(float)
    if root is None:
        return {}
    stack = [(root, OTHER)]
    while stack:
        frame, inherited = stack.pop()
        here = _activity(frame) or inherited
        children = list(frame.children)
        totals[here] += frame.time - sum(child.time for child in children)
        stack.extend((child, here) for child in children)
    return dict(sorted(((k, round(v, 3)) for k, v in totals.items() if v > 0.0005), key=lambda kv: -kv[1]))


def main() -> None:
    for path in sys.argv[1:]:
        print(path)
        totals = summarize(Path(path))
        whole = sum(totals.values()) or 1.0
        for name, seconds in totals.items():
            print(f"  {name:<40}{seconds:>8.3f} s {seconds / whole:>6.1%}")


if __name__ == "__main__":
    main()
