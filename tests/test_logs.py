"""The log folds a line repeated within its window into one, with a count."""

import logging

from fleet_exporter.logs import FoldRepeats


def test_a_repeated_line_is_written_once_per_window_with_a_count():
    now = [0.0]
    fold = FoldRepeats(window=60, clock=lambda: now[0])

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, args, None)

    written = []
    for _ in range(1000):  # an accept() error on every connection attempt
        r = record("socket.accept() out of system resource")
        if fold.filter(r):
            written.append(r.getMessage())
        now[0] += 0.01
    assert written == ["socket.accept() out of system resource"]
    assert fold.filter(record("another line"))  # other text is its own line
    now[0] += 60
    r = record("socket.accept() out of system resource")
    assert fold.filter(r)
    assert r.getMessage() == "socket.accept() out of system resource (and 999 times more in 60s)"
    # Arguments count as text: different clusters are different lines.
    assert fold.filter(record("cluster %s: down", "a")) and fold.filter(
        record("cluster %s: down", "b")
    )
    assert not fold.filter(record("cluster %s: down", "a"))
