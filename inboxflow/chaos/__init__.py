"""``inboxflow chaos``: a seeded fault campaign against the whole pipeline, and its checker.

- ``plan``: which faults to inject and when, drawn from one seed (pure, replayable);
- ``injector``: carries out one planned fault on the campaign's own processes, broker,
  database and API emulators;
- ``invariants``: what must hold afterwards, read from Postgres and the topics only;
- ``campaign``: the run itself: a throwaway stack, the workload, the faults, the check.
"""
