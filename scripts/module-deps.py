#!/usr/bin/env python3
"""The dependency picture of socketman's modules (architecture issue).

Reads every `src/**/*.rs` of the library (not `src/bin`, not `main.rs`), of the work tree
or of a git revision, and finds the `crate::<module>` paths each file names (in `use` lines
and inline paths; comments and `#[cfg(test)]` modules at the end of a file are skipped).
Prints, per top-level module, the modules it depends on, then every dependency cycle
(strongly connected component of more than one module) and whether any module below
`agent` names `Agent`.

    scripts/module-deps.py            # the work tree
    scripts/module-deps.py ceb2dae    # a commit (e.g. before the restructuring)
    scripts/module-deps.py --sub      # second-level modules (services::supervisor, ...)

Exit code 1 when there is a cycle, so CI can keep the graph one-way.
"""
import re
import subprocess
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
SUB = "--sub" in sys.argv
REV = args[0] if args else None


def files():
    if REV:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", REV, "src"],
                             capture_output=True, text=True, check=True).stdout.split()
    else:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "src"], capture_output=True, text=True, check=True).stdout.split()
    for f in out:
        if f.endswith(".rs") and not f.startswith("src/bin/") and f not in ("src/main.rs", "src/lib.rs"):
            yield f


def read(f):
    if REV:
        return subprocess.run(["git", "show", f"{REV}:{f}"], capture_output=True, text=True,
                              check=True).stdout
    with open(f) as fh:
        return fh.read()


def module_of(path):
    parts = path[len("src/"):-len(".rs")].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts[:2] if SUB else parts[:1])


PATH = re.compile(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)?)")
graph = {}
names_agent = set()
for f in files():
    m = module_of(f)
    graph.setdefault(m, set())
    text = read(f)
    cut = text.find("\n#[cfg(test)]\nmod tests")
    if cut >= 0:
        text = text[:cut]
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("//"):
            continue
        if m != "agent" and re.search(r"\bAgent\b", s) and "ureq::Agent" not in s:
            names_agent.add(m)
        for p in PATH.findall(s):
            seg = p.split("::")
            target = "::".join(seg[:2] if SUB else seg[:1])
            if SUB and len(seg) == 1:
                target = seg[0]
            if target != m and target.split("::")[0] not in ("VERSION", "GIT_SHA", "version_line"):
                graph[m].add(target)
# Only modules that exist (crate::VERSION etc. are items of lib.rs).
known = set(graph)
for m in graph:
    graph[m] = {t for t in graph[m] if t in known}

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(graph):
    if v not in index:
        strong(v)

print(f"modules: {len(graph)} ({REV or 'work tree'})")
for m in sorted(graph):
    print(f"  {m:<24} -> {', '.join(sorted(graph[m])) or '-'}")
cycles = [c for c in sccs if len(c) > 1]
if cycles:
    for c in cycles:
        print(f"cycle of {len(c)} modules: {' <-> '.join(c)}")
else:
    print("no dependency cycle: every edge points down")
print("modules below agent naming Agent:", ", ".join(sorted(names_agent)) or "none")
sys.exit(1 if cycles else 0)
