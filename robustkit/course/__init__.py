"""The course tooling that serves the notebooks: running them (runner, sweep), their
parameters and bars, the static site (html), the student copies (assignments) and
the exercises' self-checks (checks). The core library never imports this package."""
