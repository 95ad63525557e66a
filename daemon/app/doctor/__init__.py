"""``birdd doctor``: checks a station's setup once and says what to fix (see ``cli``)."""
