"""Tables, figures and HTML pages from the per-cell results."""
