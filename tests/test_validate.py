"""Public course_lib functions reject bad arguments with a message naming the argument,
the shape received and the shape expected."""

import pytest
import torch

from course_lib import attention


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: attention.dot_scores(torch.ones(2, 8), torch.ones(3, 6)),
         "keys has D=6 but query has D=8"),
        (lambda: attention.dot_scores(torch.ones(8), torch.ones(3, 8)),
         r"query must have shape \(L, D\), got \(8,\)"),
        (lambda: attention.dot_scores(torch.ones(2, 8, dtype=torch.long), torch.ones(3, 8)),
         "query must be a floating-point tensor"),
        (lambda: attention.softmax([1.0, 2.0]), "scores must be a torch.Tensor"),
        (lambda: attention.soft_lookup(torch.ones(2, 4), torch.ones(3, 4), torch.ones(5, 2)),
         "values has S=5 but keys has S=3"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
