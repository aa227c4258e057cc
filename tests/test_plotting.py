"""Figures render Hangul and math minus signs with the shipped fonts (no empty boxes)."""

import logging
import warnings

import matplotlib.pyplot as plt
import torch

from course_lib.plotting import attention_heatmap


def test_hangul_and_minus_signs_have_glyphs(caplog):
    fig, ax = plt.subplots()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        attention_heatmap(torch.softmax(torch.randn(3, 4), -1), ["나는", "학생", "이다", "."],
                          ["I", "am", "student"], title="어텐션 분포", ax=ax)  # fmt: skip
        inset = fig.add_axes([0.1, 0.1, 0.2, 0.2], yscale="log")
        inset.plot([1e-3, 1e-1])  # log ticks: mathtext with minus signs
        fig.canvas.draw()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "glyph" in m.lower()], messages
    plt.close(fig)
