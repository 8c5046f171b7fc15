"""zeroshot.progress: the one progress line, with its rate and time to go."""

from __future__ import annotations

import pytest

from zeroshot.progress import Progress, duration


def test_the_progress_line_has_an_eta(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress("encoded images", 1000, every_s=0.0)
    progress.start -= 10.0  # 10 s ago
    with caplog.at_level("INFO"):
        progress.update(250)
        progress.update(1000)
    assert "250/1000 images, 25.0 images/s, ETA 30s" in caplog.text
    assert caplog.records[-1].getMessage().endswith("images/s")  # done: no ETA
    assert [duration(s) for s in (4.4, 125, 7260)] == ["4s", "2m05s", "2h01m"]
