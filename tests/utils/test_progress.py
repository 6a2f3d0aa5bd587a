import re

import pytest

from finegrain_tf.utils import progress as progress_mod
from finegrain_tf.utils.progress import ProgressBar, track


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def test_log_mode_lines_have_total_rate_and_eta(clock):
    lines = []
    with ProgressBar(total=100, desc="features", unit="batch", mode="log", log_interval_s=10,
                     log_fn=lambda fmt, line: lines.append(line)) as bar:
        for _ in range(40):
            clock.t += 0.5  # 2 batches/s
            bar.update(1, loss=0.5)
    # one line after 10 s (20 batches), one at 20 s (40 batches) -- already written, so no extra final line
    assert len(lines) == 2, lines
    assert re.match(r"features:\s+20% 20/100 \[00:10<00:40, +2\.00batch/s, loss=0\.5\]", lines[0]), lines[0]
    assert re.match(r"features:\s+40% 40/100 \[00:20<00:30, ", lines[1]), lines[1]


def test_log_mode_final_line_and_unknown_total(clock):
    lines = []
    bar = ProgressBar(total=None, desc="labels", mode="log", log_interval_s=60,
                      log_fn=lambda fmt, line: lines.append(line))
    clock.t += 4
    bar.update(8)
    bar.close()
    bar.close()  # idempotent
    assert lines == ["labels: 8 [00:04,  2.00it/s]"]


def test_auto_mode_logs_when_stdout_is_not_a_terminal(capsys):
    # under pytest's capture stdout is not a terminal
    assert ProgressBar(total=3, mode="auto").mode == "log"
    assert ProgressBar(total=3, enabled=False).mode == "off"


def test_bar_mode_uses_tqdm(capsys):
    bar = ProgressBar(total=3, desc="x", mode="bar", leave=True)
    bar.update(3, loss=1.0)
    bar.close()
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=1" in err


def test_progress_wraps_iterable_and_counts(clock):
    lines = []
    out = list(track(range(5), desc="it", mode="log", log_interval_s=1000,
                        log_fn=lambda fmt, line: lines.append(line)))
    assert out == [0, 1, 2, 3, 4]
    assert lines and lines[-1].startswith("it: 100% 5/5")


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "fancy"}, r"mode must be one of \['auto', 'bar', 'log'\], got 'fancy'"),
    ({"total": -1}, r"total must be a non-negative int or None, got -1"),
    ({"log_interval_s": float("nan")}, r"log_interval_s must be >= 0, got nan"),
])
def test_progress_bar_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgressBar(**kwargs)
