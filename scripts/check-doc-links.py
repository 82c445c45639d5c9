#!/usr/bin/env python3
"""Every reference to a document of the repository resolves: relative links in
Markdown files, and `docs/<file>.md#<anchor>` citations in code comments, config
and schemas. Anchors follow GitHub's rule (lowercase, punctuation dropped,
spaces to hyphens). Exits 1 naming each broken reference."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found, in_code = set(), False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
                found.add(slug(m.group(1)))
        cache[path] = found
    return cache[path]


def check(source, target, anchor, problems):
    if not target.exists():
        problems.append(f"{source}: {target.relative_to(ROOT) if ROOT in target.parents else target} does not exist")
    elif anchor and target.suffix == ".md" and anchor not in anchors(target):
        problems.append(f"{source}: no heading #{anchor} in {target.relative_to(ROOT)}")


files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
problems = []
for f in files:
    p = ROOT / f
    if not p.is_file() or p.suffix not in {".md", ".rs", ".toml", ".yaml", ".yml", ".json", ".sh", ".py"}:
        continue
    if f.startswith(("bench/results/", "fuzz/corpus/", "deploy/schemas/")) or "node_modules" in f:
        continue
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".md":
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"[a-z]+:", link) or link.startswith("<"):
                continue
            target, _, anchor = link.partition("#")
            check(f, (p.parent / target).resolve() if target else p, anchor, problems)
    for m in re.finditer(r"\bdocs/([\w./-]+\.(?:md|yaml))(?:#([\w-]+))?", text):
        check(f, ROOT / "docs" / m.group(1), m.group(2), problems)
for line in problems:
    print("broken reference:", line)
sys.exit(1 if problems else 0)
