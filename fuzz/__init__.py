"""Coverage-guided fuzzing of the relay's parsers and its socket-free core.

`python -m fuzz.run TARGET --seconds N` runs one target under atheris;
`fuzz.targets.TARGETS` lists them. Inputs that once broke a target are kept
in fuzz/corpus/TARGET/ and replayed by the test suite. This package imports
nothing from the relay at import time, so that atheris can instrument the
relay's modules when a target loads them.
"""
