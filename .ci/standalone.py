#!/usr/bin/env python3
"""Fails if a tracked file reads outside the repository or names a machine's absolute path.

The repository must build, test and document itself from a clone anywhere. So no tracked text
file may name a path that climbs out of it (`../shared/...` from the repository root, or a
`../` chain that leaves it from the file's own directory) or an absolute path that only exists
on some machine (`/work/...`, `/home/...`, `/root/...`, `/Users/...`, `/mnt/...`). System paths
(`/usr`, `/etc`, `/proc`, `/tmp`, ...) are what every machine has and are not flagged.
Vendored third-party files (tests/crds/, tests/fixtures/) are data, not inputs, and are skipped.

    python3 .ci/standalone.py               # the tracked files of this repository
    python3 .ci/standalone.py --self-test   # plants each kind of escape; each must be found
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = ("tests/crds/", "tests/fixtures/", "fuzz/corpus/", ".ci/standalone.py")
# Not after `:` either: a field of a passwd line written into an image is not an input.
MACHINE = re.compile(r"(?<![\w.$}/:-])/(?:work|home|root|Users|mnt)/[\w.-]+")
CLIMB = re.compile(r"(?<![\w./-])((?:\.\./)+)([\w.-]+)")


def tracked(repo: Path) -> list:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def escapes(start: Path, climb: str, repo: Path) -> bool:
    target = os.path.normpath(start / climb)
    return os.path.relpath(target, repo).startswith("..")


def problems(repo: Path, files: list) -> list:
    found = []
    for rel in files:
        if rel.startswith(SKIP):
            continue
        path = repo / rel
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        text = data.decode("utf-8", "replace")
        markdown = rel.endswith(".md")
        for n, line in enumerate(text.splitlines(), 1):
            for m in MACHINE.finditer(line):
                found.append(f"{rel}:{n}: absolute path of a machine: {m.group(0)}")
            for m in CLIMB.finditer(line):
                # A path relative to the file (include_bytes!, a Markdown link, a kustomize
                # base) is fine where it lands on something inside the repository; otherwise
                # code may mean it from the repository root (cargo runs tests there), and
                # neither may leave the repository.
                here = path.parent / m.group(1) / m.group(2)
                if not escapes(path.parent, m.group(1), repo) and here.exists():
                    continue
                starts = [path.parent] if markdown else [path.parent, repo]
                if any(escapes(start, m.group(1), repo) for start in starts):
                    found.append(f"{rel}:{n}: reads outside the repository: {m.group(0)}")
    return found


def self_test() -> bool:
    plants = {
        "tests/common/harness.rs": 'let p = repo().join("../shared/crds").join(file);\n',
        "src/lib.rs": 'let p = PathBuf::from("/work/shared/crds");\n',
        "docs/testing.md": "CRDs from [there](../../shared/crds/).\n",
        "bench.sh": "cat /home/someone/hellos.bin\n",
    }
    clean = {
        "README.md": "See [docs](docs/testing.md) and `/usr/bin/haproxy`, `/tmp/x`.\n",
        "docs/testing.md": "Back to the [front page](../README.md).\n",
        "tests/common/harness.rs": 'let p = repo().join("tests/crds"); // ../ in a comment is text\n',
    }
    good = True
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for rel, body in clean.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(body)
        if problems(repo, list(clean)):
            print(f"self-test: the clean tree was flagged: {problems(repo, list(clean))}")
            good = False
        for rel, body in plants.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(body)
            if not problems(repo, [rel]):
                print(f"self-test: planted escape not found in {rel}: {body.strip()}")
                good = False
            (repo / rel).write_text(clean.get(rel, ""))
    if good:
        print(f"self-test: {len(plants)} planted escapes found, the clean tree passes")
    return good


def main() -> bool:
    repo = Path(__file__).resolve().parent.parent
    files = tracked(repo)
    found = problems(repo, files)
    for line in found:
        print(line)
    if not found:
        print(f"{len(files)} tracked files: none reads outside the repository")
    return not found


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(0 if self_test() else 1)
    sys.exit(0 if main() else 1)
