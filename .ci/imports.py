#!/usr/bin/env python3
"""Fails if a crate's modules import each other in a circle.

Reads every .rs file under each crate's src/, takes the module paths its `use crate::...`,
`crate::x::` and `super::` references name, and looks for cycles among files. The crate root
(lib.rs) declares and re-exports modules, so its `pub use` and `mod` lines are not
dependencies; a parent module's `mod child;` is not one either.

    python3 .ci/imports.py proxy/src control/src
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return "::".join(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod x { ... }` blocks: tests may reach anywhere."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def deps(src: Path, file: Path, modules: set) -> set:
    me = module_of(src, file)
    text = strip_tests(file.read_text())
    text = re.sub(r"//.*", "", text)
    if file.name == "lib.rs":
        text = re.sub(r"pub use [^;]*;", "", text)
    found = set()
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*\w+)|\buse (crate|super)::\{([^;]*)\}", text):
        if m.group(1):
            root, path = m.group(1), m.group(2)
            paths = [path]
        else:
            root = m.group(3)
            paths = [p.strip() for p in re.split(r"[,{}]", m.group(4)) if p.strip()]
        base = [] if root == "crate" else me.split("::")[:-1]
        for path in paths:
            parts = base + path.split("::")
            # The longest prefix that names a module of this crate.
            for n in range(len(parts), 0, -1):
                cand = "::".join(parts[:n])
                if cand in modules:
                    if cand != me:
                        found.add(cand)
                    break
    # A parent reaching into its own children is how a module tree is built, not a circle.
    return {d for d in found if not d.startswith(me + "::") or me == ""} - {""}


def cycles(graph: dict) -> list:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main(roots):
    bad = False
    for root in roots:
        src = Path(root)
        files = sorted(src.rglob("*.rs"))
        modules = {module_of(src, f) for f in files}
        graph = {module_of(src, f): deps(src, f, modules) for f in files}
        found = cycles(graph)
        for cycle in found:
            bad = True
            print(f"{root}: import circle: {' -> '.join(m or 'lib' for m in cycle)}")
        if not found:
            edges = sum(len(v) for v in graph.values())
            print(f"{root}: {len(graph)} modules, {edges} imports, no circle")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv[1:] or ["proxy/src", "control/src"])
