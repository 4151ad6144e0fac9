"""Load tests of the relay: simulated phones over UDP against the real relay process.

`python -m loadtests quick` runs the short set that CI also runs, `python -m
loadtests full` the full set, and `python -m loadtests run SCENARIO` one
scenario. Each run measures its ceilings (a uvloop echo server, raw SQLite
inserts, the crypto primitives) on the same machine in the same run, and
reports the relay's figures as ratios of them.
"""
