"""Scheduling: policy triggers (``triggers``), the compile step from policies to jobs
(``compile``), the APScheduler service (``service``), the runner that admits and runs each fire
(``runner``) and the stall watchdog (``watchdog``)."""
