"""shop: the demo application that the jobfleet lab deploys."""

#: Shown by the ``version`` job, so a test can tell which release ran a job.
CODE_VERSION = "1"
