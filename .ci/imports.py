#!/usr/bin/env python3
"""Fails if a crate's modules import each other in a circle.

Reads every .rs file under each crate's src/ and takes, for each module, every module of the
same crate that its paths name: `crate::a::b`, `super::a`, `self::a`, and bare paths that start
at a child module (`splice::Pump` in forward/mod.rs, `use splice::Pump`), `use` trees with
nested braces included. A path that names an item of the crate root (lib.rs) is an edge to the
module the item is defined in: to lib.rs itself for an item lib.rs defines (so `crate::Proxy`
from a module lib.rs's own code uses is a circle), to the module a `pub use` re-exports it from
otherwise. Nothing is dropped: a parent's code using its child while the child uses the parent
is a circle like any other. What is not an edge: `mod x;` declarations, lib.rs's `pub use`
lines (re-exports, not uses), comments, and `#[cfg(test)]` blocks (tests may reach anywhere).

    python3 .ci/imports.py proxy/src control/src
    python3 .ci/imports.py --self-test      # plants circles in a scratch crate; each must fail
"""
import re
import sys
import tempfile
from pathlib import Path


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return "::".join(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod x { ... }` blocks and `#[cfg(test)]` items' bodies."""
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


def strip_noise(text: str) -> str:
    """Comments and string literals name no module."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand_use(tree: str) -> list:
    """`a::{b, c::{d, e as f}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            cur += ch
        return parts + [cur]

    def walk(s):
        if "{" not in s:
            return [s] if s else []
        i = s.index("{")
        prefix, inner = s[:i], s[i + 1 : s.rindex("}")]
        out = []
        for part in split_top(inner):
            for p in walk(part):
                out.append(prefix + p if p != "self" else prefix.rstrip(":"))
        return out

    return [p.rstrip(":") for p in walk(tree) if p]


class Crate:
    def __init__(self, src: Path):
        self.src = src
        self.files = sorted(src.rglob("*.rs"))
        self.modules = {module_of(src, f) for f in self.files}
        lib = src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"
        text = strip_noise(strip_tests(lib.read_text())) if lib.exists() else ""
        # Item re-exported by the root -> the path it comes from.
        self.reexports = {}
        for m in re.finditer(r"\bpub\s+use\s+([^;]+);", text):
            for path in expand_use(m.group(1)):
                path = path.removeprefix("crate::").removeprefix("self::")
                self.reexports[path.split("::")[-1]] = path

    def children(self, me: str) -> set:
        pre = me + "::" if me else ""
        return {m[len(pre) :].split("::")[0] for m in self.modules if m.startswith(pre) and m != me}

    def resolve(self, parts: list, seen=0) -> str:
        """The module a path (absolute, from the crate root) names, following root re-exports."""
        for n in range(len(parts), 0, -1):
            cand = "::".join(parts[:n])
            if cand in self.modules:
                return cand
        # The path starts at the crate root with an item, not a module.
        head = parts[0] if parts else ""
        if head in self.reexports and seen < 8:
            return self.resolve(self.reexports[head].split("::"), seen + 1)
        return ""

    def deps(self, file: Path) -> set:
        me = module_of(self.src, file)
        text = strip_noise(strip_tests(file.read_text()))
        is_root = file.parent == self.src and file.name in ("lib.rs", "main.rs")
        root_uses = set()
        if is_root:
            text = re.sub(r"\bpub\s+use\s+[^;]*;", "", text)
            # A re-exported name is also an import of the root's own code.
            for name, path in self.reexports.items():
                if re.search(rf"(?<![\w:]){name}\b", text):
                    root_uses.add(path)
        text = re.sub(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text)
        parent = me.split("::")[:-1] if me else []
        mine = me.split("::") if me else []
        kids = self.children(me)
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(expand_use(m.group(1)))
        text = re.sub(r"\buse\s+[^;]+;", "", text)
        paths.extend(m.group(0) for m in re.finditer(r"(?<![\w:])\w+(?:::\w+)+", text))
        found = {self.resolve(p.split("::")) for p in root_uses} - {me}
        for path in paths:
            parts = [p for p in path.split("::") if p]
            if not parts:
                continue
            head = parts[0]
            if head == "crate":
                absolute = parts[1:]
            elif head == "super":
                base = list(parent)
                rest = parts[1:]
                while rest and rest[0] == "super":
                    base = base[:-1]
                    rest = rest[1:]
                absolute = base + rest
            elif head == "self":
                absolute = mine + parts[1:]
            elif head in kids:
                absolute = mine + parts
            else:
                continue
            if not absolute:
                continue
            target = self.resolve(absolute)
            if target != me:
                found.add(target)
        return found

    def graph(self) -> dict:
        return {module_of(self.src, f): self.deps(f) for f in self.files}


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


def check(roots) -> bool:
    ok = True
    for root in roots:
        graph = Crate(Path(root)).graph()
        found = cycles(graph)
        for cycle in found:
            ok = False
            print(f"{root}: import circle: {' -> '.join(m or 'lib' for m in cycle)}")
        if not found:
            edges = sum(len(v) for v in graph.values())
            print(f"{root}: {len(graph)} modules, {edges} imports, no circle")
    return ok


def self_test() -> bool:
    """A scratch crate with no circle passes; each planted circle fails."""
    base = {
        "lib.rs": "mod forward;\nmod revoke;\npub use forward::Forward;\npub struct Proxy;\n"
        "impl Proxy { fn f(&self) { forward::run(); } }\n",
        "forward/mod.rs": "mod splice;\npub struct Forward;\npub fn run() { splice::Pump::go(); }\n",
        "forward/splice.rs": "pub struct Pump;\nimpl Pump { pub fn go() {} }\n",
        "revoke.rs": "use crate::Forward;\npub fn r(_: Forward) {}\n",
    }
    plants = {
        "child uses its parent (use super::)": ("forward/splice.rs", "use super::Forward;\n"),
        "child uses its parent (super:: path)": ("forward/splice.rs", "fn g(_: super::Forward) {}\n"),
        "module uses an item lib.rs defines": ("forward/mod.rs", "use crate::Proxy;\n"),
        "nested use tree": ("forward/splice.rs", "use crate::{revoke, forward::{Forward}};\n"),
        "lib.rs item from a re-exporting path": ("forward/mod.rs", "fn h(_: crate::Proxy) {}\n"),
    }
    good = True
    with tempfile.TemporaryDirectory() as tmp:
        def write(extra=None):
            for name, body in base.items():
                path = Path(tmp, "src", name)
                path.parent.mkdir(parents=True, exist_ok=True)
                if extra and extra[0] == name:
                    body = extra[1] + body
                path.write_text(body)

        write()
        if cycles(Crate(Path(tmp, "src")).graph()):
            print("self-test: the clean scratch crate was reported as a circle")
            good = False
        for what, plant in plants.items():
            write(plant)
            if not cycles(Crate(Path(tmp, "src")).graph()):
                print(f"self-test: planted circle not found: {what}")
                good = False
    if good:
        print(f"self-test: {len(plants)} planted circles found, the clean crate passes")
    return good


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(0 if self_test() else 1)
    sys.exit(0 if check(sys.argv[1:] or ["proxy/src", "control/src"]) else 1)
