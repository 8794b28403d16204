"""Process-wide knobs that both domains set for the threads they run: the GIL's
switch interval (`gil`) and the scheduler's slice (`sched`)."""
