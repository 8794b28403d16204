"""Process-wide knobs that both domains set for the threads they run: the GIL's
switch interval (`gil`), the scheduler's slice (`sched`), and the signal mask of the
threads numpy starts (`nativethreads`)."""
