"""Running records through a real worker and watching what comes out (broker tests)."""
from __future__ import annotations

from streams.live import Observed, Watcher, produce


async def run_through_worker(settings, worker, lines, expect_accounted, timeout_s=90.0,
                             settle_s=2.0) -> Observed:
    """Produce ``lines``, wait until ``expect_accounted`` records are accounted for
    and the detect stage has caught up, then a little longer to see that nothing
    more (a stray duplicate, say) comes out."""
    def alive(_):
        assert worker.poll() is None, f"worker exited with {worker.returncode}; see its log"

    watcher = Watcher(settings)
    await watcher.start()
    await produce(settings, lines)
    ok = await watcher.until(lambda o: o.settled(expect_accounted), timeout_s, tick=alive)
    await watcher.until(lambda o: False, settle_s)
    await watcher.stop()
    observed = watcher.observed
    assert ok, (f"only {observed.accounted}/{expect_accounted} records accounted for, "
                f"{len(observed.alerts)} alerts")
    return observed
