"""The time bounds usnetd holds its workers to (usnet.domain.workers).

In one place because three parts read them: the relay's deadlines (`Relay.send`), the
heartbeat and the drains (`Supervisor.check`, `Drains.check`), and the restart rule
(`Supervisor.died`); the tests wait on them too. What a silent worker is, hung or only
starved, is usnet.domain.liveness's to judge."""

__all__ = ["DRAIN_LIMIT", "HEARTBEAT", "HUNG_AFTER", "RESTART_LIMIT", "RESTART_WITHIN", "START_TIMEOUT",
           "WORKER_TIMEOUT"]

# the longest usnetd waits for a worker's reply to a relayed request: a worker's loop answers in
# milliseconds, so one silent this long is suspect: hung (stopped, stuck) unless starved of CPU
# (`Supervisor.suspect`)
WORKER_TIMEOUT = 1.0
HEARTBEAT = 0.5  # usnetd asks each worker this often whether it still turns its loop
HUNG_AFTER = 2.0  # a worker that leaves a heartbeat unanswered this long is hung: killed and replaced
# a worker that has not ended a departed client's session this long after usnetd half-closed it
# is suspect, as for an unanswered request (`Drains.check`): the bound on a drain
DRAIN_LIMIT = HUNG_AFTER
START_TIMEOUT = 5.0  # the bounds for a worker not yet heard from (a fork's start on a loaded machine)
RESTART_WITHIN = 10.0  # a worker that dies this soon after its start "died at start"
RESTART_LIMIT = 5  # after this many such deaths in a row, worker k is not restarted again
