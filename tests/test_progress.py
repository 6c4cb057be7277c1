"""Progress lines: what they say (done/total, percent, failed, tokens, rate, ETA; batches for a job) and
when (a changed progress at most every 5 minutes, an unchanged one after 30 polls), on a fake clock."""

from __future__ import annotations

from airflow_provider_openai_batch.progress import ProgressLog, Snapshot, format_line, snapshot


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, fmt: str, *args: object) -> None:
        self.lines.append(fmt % args)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def batch(done: int, total: int, failed: int = 0, status: str = "in_progress", tokens: int = 0, id: str = "b") -> dict:
    usage = {"total_tokens": tokens} if tokens else None
    return {
        "id": id,
        "status": status,
        "request_counts": {"completed": done - failed, "failed": failed, "total": total},
        "usage": usage,
    }


def test_a_line_for_one_batch_has_counts_percent_rate_and_eta():
    line = format_line(Snapshot(done=250, total=1000, failed=3, tokens=12_345), rate_per_second=5.0, clock=0.0)
    assert line == (
        "Progress: requests 250/1,000 (25.0%), 3 failed, tokens 12,345, rate 300 requests/min, ETA 2m (00:02 UTC)"
    )
    assert "batches" not in line


def test_a_job_line_counts_batches_and_adds_the_shards_outside_the_wait():
    now = snapshot(
        [batch(10, 40, failed=1, id="b2"), batch(0, 0, status="validating", id="b3")],
        batches_total=4,
        base={"batches_done": 1, "done": 40, "total": 40, "failed": 2, "tokens": 900},
        expected={"b2": 40, "b3": 40},  # b3 is still validating: its size comes from the split
    )
    assert now == Snapshot(done=50, total=120, failed=3, tokens=900, batches_done=1, batches_total=4)
    assert format_line(now, None, 0.0).startswith("Progress: batches 1/4 done, requests 50/120 (41.7%), 3 failed")


def test_the_cadence_is_on_change_at_most_every_five_minutes_and_a_heartbeat_after_30_polls():
    log, clock = Lines(), Clock()
    progress = ProgressLog(log, clock=clock)
    assert progress.observe(snapshot([batch(0, 0, status="validating")])) is None  # nothing known yet
    assert progress.observe(snapshot([batch(0, 100)])) is not None  # the first look with a total
    for done in range(1, 10):  # it moves at every poll, one minute apart: no line before 5 minutes passed
        clock.now += 60
        line = progress.observe(snapshot([batch(done * 5, 100)]))
        assert (line is not None) == (done == 5), done
    assert len(log.lines) == 2 and "requests 25/100 (25.0%)" in log.lines[1]
    assert "rate 5 requests/min" in log.lines[1] and "ETA 15m" in log.lines[1]
    stuck = snapshot([batch(45, 100)])
    written = [progress.observe(stuck) for _ in range(30)]  # 30 quick polls: one line, the heartbeat
    assert sum(1 for w in written if w) == 1
