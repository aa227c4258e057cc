"""Chapter 7's speed ladder, as a benchmark script: the code is course_lib.ladder (so that the
chapter's notebook can run it wherever course_lib is installed).

Run: .venv/bin/python -m benchmarks.gpu_ladder [--device cuda] [--steps 20] [--json FILE]
     [--compile] [--quick]
"""

from course_lib.ladder import main

if __name__ == "__main__":
    main()
