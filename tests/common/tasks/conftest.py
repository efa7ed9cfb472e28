from tests.support.task_packages import make_task  # noqa: F401  (the fixture)
