"""Hidden checks: the visible probes on other sizes, dtypes and seeds, plus extra properties.

Only the instructor's grading environment has this package; nbgrader strips the cells that
import it from the released notebooks.
"""
