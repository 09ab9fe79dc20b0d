"""Write benchmarks/data/sentences.txt and calibration.txt: real English sentences from CPython's docstrings.

Run once with CPython 3.11.7 (the files are committed; the benchmark only reads them). Every
docstring of every module, class and function of the standard library (tests, IDLE, tkinter,
lib2to3 and the like left out) is split into sentences; a sentence is kept if it is prose: 50 to
160 characters, at least 8 words, capitalised, ending in a full stop, with no code characters.
Two per module (the first two by sha256, so the pick is fixed), shuffled with seed 0: the first
320 go to ``sentences.txt`` (the test set), the rest (198 with CPython 3.11.7) to
``calibration.txt`` (the inputs of the benchmark's calibrated rows, none of them in the test
set). The docstrings are (c) the Python Software Foundation, PSF License v2.
"""

import ast
import hashlib
import random
import re
import sys
import sysconfig
from pathlib import Path

SKIP = {"test", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "distutils", "site-packages", "pydoc_data", "encodings"}
PER_MODULE = 2
KEEP = 320
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
CODE_LIKE = re.compile(r"[\[\]{}()<>=_`*#|\\@$%^~/:;\"]|\.\.\.|\bself\b|\bNone\b|\bTrue\b|\bFalse\b|e\.g|i\.e|etc\.|\d\.\d")
HEADER = """\
# Real English sentences for benchmarks/bench_real_model.py{purpose}, one per line ('#' lines are comments).
# Source: docstrings of the CPython {version} standard library, (c) Python Software Foundation,
# PSF License v2; picked by benchmarks/data/make_sentences.py (its docstring says how).
"""


def prose_sentences(docstring: str) -> list[str]:
    found = []
    for paragraph in docstring.split("\n\n"):
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            acronyms = sum(1 for w in sentence.split() if w.isupper() and len(w) > 1)
            if (50 <= len(sentence) <= 160 and len(sentence.split()) >= 8 and sentence[0].isupper()
                    and sentence.endswith(".") and not CODE_LIKE.search(sentence) and acronyms <= 1):
                found.append(sentence)
    return found


def module_sentences(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
    return sorted({s for doc in docs if doc for s in prose_sentences(doc)}, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked, seen = [], set()
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP & set(path.relative_to(stdlib).parts[:-1]):
            continue
        for sentence in module_sentences(path)[:PER_MODULE]:
            if sentence.lower() not in seen:
                seen.add(sentence.lower())
                picked.append(sentence)
    random.Random(0).shuffle(picked)
    files = {"sentences.txt": ("", picked[:KEEP]),
             "calibration.txt": (" (calibration inputs, none in sentences.txt)", picked[KEEP:])}
    for name, (purpose, sentences) in files.items():
        text = HEADER.format(purpose=purpose, version=sys.version.split()[0]) + "\n".join(sentences) + "\n"
        (Path(__file__).parent / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
