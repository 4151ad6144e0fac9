"""Run one fuzz target under atheris for a bounded time.

    python -m fuzz.run TARGET [--seconds N] [--runs N] [--work DIR]
                              [--keep-corpus]

The target starts from its saved inputs in fuzz/corpus/TARGET/ and from
the inputs of earlier runs in the work folder (default fuzz/work/TARGET/,
which git ignores). New inputs that reach new code go to the work folder,
or to fuzz/corpus/TARGET/ with --keep-corpus. An input that breaks the
target is written to fuzz/findings/TARGET/ and the command exits non-zero;
once the fault is fixed, move the file into fuzz/corpus/TARGET/ so that
the suite replays it.
libFuzzer prints its final statistics last, among them
`stat::number_of_executed_units`, the number of inputs tried.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
FINDINGS_DIR = FUZZ_DIR / "findings"
WORK_DIR = FUZZ_DIR / "work"
TARGET_NAMES = ("codec", "register", "cookie", "client", "core", "config", "http")
# libFuzzer's own limits: the longest input, and seconds one input may take.
MAX_INPUT_BYTES = 4096
INPUT_TIMEOUT_S = 10


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("target", choices=TARGET_NAMES, help="the target to fuzz")
    parser.add_argument(
        "--seconds",
        type=int,
        default=60,
        help="how long to fuzz, in seconds (default 60)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=-1,
        help="stop after this many inputs (default: no limit)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for new inputs (default fuzz/work/TARGET/)",
    )
    parser.add_argument(
        "--keep-corpus",
        action="store_true",
        help="save new coverage-increasing inputs into fuzz/corpus/TARGET/",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    import atheris

    # Instrument the relay's modules, so that the fuzzer sees their branches.
    with atheris.instrument_imports(include=["relay", "fuzz"]):
        from fuzz.targets import TARGETS

    corpus = CORPUS_DIR / arguments.target
    findings = FINDINGS_DIR / arguments.target
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    work = arguments.work or WORK_DIR / arguments.target
    if arguments.keep_corpus:
        work = corpus
    work.mkdir(parents=True, exist_ok=True)
    _keep_state_beside(work)
    target = TARGETS[arguments.target]()
    folders = [str(work)] if work == corpus else [str(work), str(corpus)]
    libfuzzer_arguments = [
        sys.argv[0],
        f"-max_total_time={arguments.seconds}",
        f"-runs={arguments.runs}",
        f"-max_len={MAX_INPUT_BYTES}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        *folders,
    ]
    atheris.Setup(libfuzzer_arguments, target)
    # Never returns: libFuzzer exits the process when time or runs are up.
    atheris.Fuzz()


def _keep_state_beside(work: Path) -> None:
    """Put the targets' temporary files (a relay database) in WORK.state/.

    libFuzzer ends the process without Python's clean-up, so temporary
    folders would otherwise pile up; this one is emptied at every start.
    It is not inside the work folder, whose files libFuzzer reads as inputs.
    """
    state = work.with_name(work.name + ".state")
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    tempfile.tempdir = str(state)


if __name__ == "__main__":
    main()
