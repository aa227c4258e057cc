"""Trusted grading: sandboxed, judged outside the student's process, parallel, resumable.

Modules, in the order a submission meets them:

* ``batch``     the ``grade`` command: which students, which workers, resuming, the summary
* ``stubs``     the grading directory the sandbox may read (course_lib with exercises stubbed)
* ``judge``     grades one submission; runs the test cells here, the student's cells remotely
* ``notebooks`` reads untrusted notebooks; the order cells are graded in
* ``sandbox``   bubblewrap, limits, and killing a worker for sure
* ``worker``    the sandboxed process that runs the student's code (untrusted)
* ``remote``    proxies for the student's objects; the autograd bridge
* ``wire``      the framing and the safe decoding of what the worker sends back
* ``course``    nbgrader's config and gradebook
* ``feedback``  the ``feedback`` command's HTML pages
"""
