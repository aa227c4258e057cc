"""course_lib: the pieces the chapters of the attention course build."""
