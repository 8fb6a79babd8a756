"""The daemon's log lines are the standard format, only cheaper to produce."""

from __future__ import annotations

import logging

from mailsec_milter.cli import LOG_FORMAT, SecondCachedFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("mailsec_milter.milter", logging.INFO, __file__, 1,
                               "queue_id=%s verdict=%s", ("ABC", "accept"), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_same_text_as_the_standard_formatter_across_seconds() -> None:
    ours, standard = SecondCachedFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    for created in (1795830000.001, 1795830000.999, 1795830001.0, 1795830001.5, 1795829999.25):
        record = _record(created)
        assert ours.format(record) == standard.format(_record(created))
