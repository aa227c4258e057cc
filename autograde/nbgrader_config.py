"""nbgrader configuration for the course; run nbgrader commands from this folder."""

import os

c = get_config()  # noqa: F821 -- provided by nbgrader when it loads this file

HERE = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "attention-course"
c.CourseDirectory.root = HERE
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# A chapter notebook runs in well under a minute; a stuck submission must not hold the batch.
c.ExecutePreprocessor.timeout = 300
c.Execute.timeout = 300

# The hidden checks (hidden_checks/) are imported by the autograded test cells: kernels that
# nbgrader starts inherit this process's environment.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
