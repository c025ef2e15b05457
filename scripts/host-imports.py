#!/usr/bin/env python3
"""The host's module graph, from the `crate::` paths each top-level module's files name.

Prints one line per module with what it uses, and exits 1 if the graph has a cycle (naming
it). `make lint` runs it: the layering the code describes stays the layering it has.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "host", "src")


def modules():
    out = {}
    for name in sorted(os.listdir(ROOT)):
        path = os.path.join(ROOT, name)
        if name.endswith(".rs") and name != "main.rs":
            out.setdefault(name[:-3], []).append(path)
        elif os.path.isdir(path):
            for d, _, files in os.walk(path):
                out.setdefault(name, []).extend(
                    os.path.join(d, f) for f in files if f.endswith(".rs"))
    return out


def uses(files, me, known):
    found = set()
    for f in files:
        text = open(f, encoding="utf-8").read()
        # Only code: test modules may reach anywhere, comments name what they like.
        text = text.split("#[cfg(test)]")[0]
        text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        for m in re.finditer(r"crate::([a-z_]+)", text):
            if m.group(1) in known and m.group(1) != me:
                found.add(m.group(1))
        for m in re.finditer(r"use crate::\{([^}]*)\}", text):
            for part in re.split(r"[,\s]+", m.group(1)):
                head = part.split("::")[0]
                if head in known and head != me:
                    found.add(head)
    return found


def cycle(graph):
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def main():
    mods = modules()
    graph = {m: uses(files, m, mods) for m, files in mods.items()}
    for m in sorted(graph):
        print(f"{m:14} -> {', '.join(sorted(graph[m])) or '-'}")
    c = cycle(graph)
    if c:
        print("host import cycle: " + " -> ".join(c), file=sys.stderr)
        return 1
    print("host import graph: no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
