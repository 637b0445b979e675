#!/usr/bin/env python3
"""Offline checks that the operator docs name only things that exist.

  1. every `iolane SUBCOMMAND --flag` in the docs is a flag of that subcommand in
     csi-driver/src/config.rs (check_manifests.rust_cli reads it);
  2. every option of `deploy/uninstall-node.sh` the docs name is one the script parses;
  3. every command the runbooks run in the node pod (`exec ... -c iolane -- CMD`) is a
     program of the image: `iolane`, `bash`, or a binary of a package the Dockerfile
     installs (listed with `dpkg -L` on this machine; validate.sh installs them);
  4. every csi-provisioner flag the docs name is in the node DaemonSet's arguments;
  5. the alerts: the PrometheusRule's expressions use only metrics iolane exports, with
     labels they have (the dashboard's checker); its `runbook` annotations point at
     headings of docs/runbooks.md; the runbooks describe exactly its alerts;
  6. every link to a heading of a doc (`runbooks.md#...`) resolves.

Then a self-test: a broken copy of each input must be reported.
The last line is `N passed, M failed`; exit status 0 only if nothing failed.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_manifests as cm  # noqa: E402

REPO = cm.REPO
# The docs an operator follows; each is checked for commands, flags, alerts and links.
DOCS = (
    "docs/operations.md", "docs/runbooks.md", "docs/compatibility.md", "CHANGELOG.md",
    "deploy/README.md", "README.md", "charts/iolane/README.md", "charts/iolane/templates/NOTES.txt",
)
RUNBOOKS = "docs/runbooks.md"
RULE = "deploy/components/prometheusrule/prometheusrule.yaml"
UNINSTALL = "deploy/uninstall-node.sh"
SUBCOMMANDS = set(cm.CLI_FLAGS)


def load_texts() -> dict[str, str]:
    return {d: (REPO / d).read_text() for d in DOCS}


def code_spans(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks, with `\\` continuations
    joined."""
    out = []
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    for block in fenced:
        out += block.replace("\\\n", " ").splitlines()
    rest = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    out += re.findall(r"`([^`\n]+)`", rest)
    return out


def iolane_flag_problems(texts: dict[str, str]) -> list[str]:
    problems = []
    for doc, text in texts.items():
        for span in code_spans(text):
            for m in re.finditer(r"\biolane (" + "|".join(sorted(SUBCOMMANDS)) + r")\b([^|;&#]*)", span):
                sub, tail = m.group(1), m.group(2)
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", tail):
                    if flag not in cm.CLI_FLAGS[sub]:
                        problems.append(f"{doc}: `iolane {sub}` has no flag {flag} ({span.strip()[:80]})")
    return problems


def uninstall_options() -> set[str]:
    text = (REPO / UNINSTALL).read_text()
    return set(re.findall(r"^\s+(--[a-z-]+)\)", text, re.M)) | {"-h", "--help"}


def uninstall_problems(texts: dict[str, str], options: set[str] | None = None) -> list[str]:
    """The options given to the script on a command line (after its name, or after
    `bash -s --` when it is fed on stdin), and the `--options` quoted in a paragraph that
    names it, must be options the script parses."""
    options = uninstall_options() if options is None else options
    problems = set()
    for doc, text in texts.items():
        chunks = []
        for span in code_spans(text):
            if "uninstall-node.sh" not in span:
                continue
            chunks.append(span.split("uninstall-node.sh", 1)[1])
            if "bash -s --" in span:
                chunks.append(span.split("bash -s --", 1)[1].split("<", 1)[0])
        # Paragraphs, and each item of a list on its own.
        for para in re.split(r"\n\n|\n(?=\s*(?:-|\d+\.) )", text):
            if "uninstall-node.sh" in para:
                chunks += re.findall(r"`(--[a-z][^`]*)`", para)
        for chunk in chunks:
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", chunk):
                if flag not in options:
                    problems.add(f"{doc}: {UNINSTALL} has no option {flag}")
    return sorted(problems)


def image_programs() -> tuple[set[str], list[str]]:
    """Programs in the iolane image: iolane, bash, and the binaries of the packages the
    Dockerfile installs, as this machine's dpkg lists them."""
    text = (REPO / "Dockerfile").read_text()
    m = re.search(r"apt-get install -y --no-install-recommends\s*\\\s*\n(.*?)\\\s*\n\s*&&", text, re.S)
    if not m:
        return set(), ["Dockerfile: the apt-get install line was not found"]
    packages = m.group(1).split()
    programs = {"iolane", "bash", "sh"}
    problems = []
    for p in packages:
        r = subprocess.run(["dpkg", "-L", p], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"package {p} (Dockerfile) is not installed here, so its programs are unknown")
            continue
        programs |= {Path(f).name for f in r.stdout.split() if re.search(r"/s?bin/[^/]+$", f)}
    return programs, problems


def exec_problems(texts: dict[str, str], programs: set[str]) -> list[str]:
    problems = []
    for doc, text in texts.items():
        for span in code_spans(text):
            for m in re.finditer(r"exec\b[^|]*?-c iolane -- (\S+)", span):
                if m.group(1) not in programs:
                    problems.append(f"{doc}: runs {m.group(1)!r} in the iolane container, which the image does not have")
    return problems


def provisioner_args() -> set[str]:
    objs = cm.render(cm.DEPLOY / "overlays/default")
    prov = cm.container_by_image(cm.find(objs, "DaemonSet", cm.NODE_DAEMONSET), "/csi-provisioner:")
    return {a.split("=", 1)[0] for a in (prov or {}).get("args") or []}


# Flags the docs give to csi-provisioner by name.
PROVISIONER_DOC_FLAGS = ("--node-deployment-immediate-binding", "--snapshot-orphan-sweep-interval")


def provisioner_problems(texts: dict[str, str], args: set[str]) -> list[str]:
    problems = []
    for doc, text in texts.items():
        for flag in PROVISIONER_DOC_FLAGS:
            if flag in text and flag not in args:
                problems.append(f"{doc} names the csi-provisioner flag {flag}, which the DaemonSet does not set")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def link_problems(texts: dict[str, str]) -> list[str]:
    problems = []
    for doc, text in texts.items():
        base = (REPO / doc).parent
        for target, anchor in re.findall(r"\(([\w./-]*\.md)?#([\w-]+)\)", text):
            path = (base / target).resolve() if target else (REPO / doc).resolve()
            rel = path.relative_to(REPO.resolve()).as_posix() if path.is_relative_to(REPO.resolve()) else str(path)
            body = texts.get(rel) or (path.read_text() if path.exists() else None)
            if body is None:
                problems.append(f"{doc}: link to {target}#{anchor}: no such file")
            elif anchor not in anchors(body):
                problems.append(f"{doc}: link to {target or doc}#{anchor}: no such heading")
    return problems


def rule_problems(rule: dict[str, Any], runbooks: str) -> list[str]:
    problems = []
    names = set()
    for group in rule.get("spec", {}).get("groups", []):
        for r in group.get("rules", []):
            name = r.get("alert", "?")
            names.add(name)
            problems += [f"{RULE} {name}: {p}" for p in cm.expr_problems(r.get("expr", ""), "")]
            rb = r.get("annotations", {}).get("runbook", "")
            m = re.fullmatch(r"docs/runbooks\.md#([\w-]+)", rb)
            if not m or m.group(1) not in anchors(runbooks):
                problems.append(f"{RULE} {name}: runbook {rb!r} is not a heading of {RUNBOOKS}")
            for label in re.findall(r"\$labels\.(\w+)", str(r.get("annotations", {}))):
                used = set(re.findall(r"\biolane_[a-z0-9_]+", r.get("expr", "")))
                series = cm.series_names()
                have = cm.TARGET_LABELS.union(*(series.get(n, frozenset()) for n in used))
                by = re.search(r"\bby\s*\(([^)]*)\)", r.get("expr", ""))
                if by:  # an aggregation keeps only its `by` labels
                    have = {x.strip() for x in by.group(1).split(",")}
                if label not in have:
                    problems.append(f"{RULE} {name}: annotation uses $labels.{label}, which the result lacks")
    documented = set(re.findall(r"`(Iolane[A-Z]\w+)`", runbooks))
    problems += [f"{RUNBOOKS} does not describe the alert {n}" for n in sorted(names - documented)]
    problems += [f"{RUNBOOKS} describes {n}, which {RULE} does not define" for n in sorted(documented - names)]
    return problems


def main() -> int:
    tally = cm.Tally()
    texts = load_texts()
    tally.record("docs: iolane flags exist", iolane_flag_problems(texts))
    tally.record("docs: uninstall-node.sh options exist", uninstall_problems(texts))
    programs, problems = image_programs()
    tally.record("docs: programs run in the iolane container exist", problems + exec_problems(texts, programs))
    args = provisioner_args()
    tally.record("docs: csi-provisioner flags are set", provisioner_problems(texts, args))
    tally.record("docs: links to headings resolve", link_problems(texts))
    rule = yaml.safe_load((REPO / RULE).read_text())
    tally.record("alerts: metrics, labels, runbooks", rule_problems(rule, texts[RUNBOOKS]))

    failures = []
    def broken(doc: str, extra: str) -> dict[str, str]:
        return dict(texts, **{doc: texts[doc] + "\n" + extra + "\n"})
    cases = [
        ("an iolane flag that does not exist",
         lambda: iolane_flag_problems(broken(RUNBOOKS, "`iolane status --since 5m`"))),
        ("a flag of another subcommand",
         lambda: iolane_flag_problems(broken(RUNBOOKS, "```sh\niolane controller --node-id x\n```"))),
        ("an uninstall option that does not exist",
         lambda: uninstall_problems(broken(RUNBOOKS, "```sh\nbash deploy/uninstall-node.sh --force-all\n```"))),
        ("a program the image lacks",
         lambda: exec_problems(broken(RUNBOOKS, '```sh\nkubectl -n iolane exec "$IOLANE" -c iolane -- jq .\n```'), programs)),
        ("a provisioner flag the DaemonSet lacks",
         lambda: provisioner_problems(texts, args - {"--node-deployment-immediate-binding"})),
        ("a link to a missing heading",
         lambda: link_problems(broken(RUNBOOKS, "[x](operations.md#no-such-heading)"))),
    ]
    bad_rule = copy.deepcopy(rule)
    bad_rule["spec"]["groups"][0]["rules"][0]["expr"] = "iolane_pool_used_percent > 85"
    cases.append(("an alert on a metric iolane does not export", lambda: rule_problems(bad_rule, texts[RUNBOOKS])))
    renamed = copy.deepcopy(rule)
    renamed["spec"]["groups"][0]["rules"][0]["alert"] = "IolanePoolAlmostFull"
    cases.append(("an alert the runbooks do not describe", lambda: rule_problems(renamed, texts[RUNBOOKS])))
    moved = copy.deepcopy(rule)
    moved["spec"]["groups"][0]["rules"][0]["annotations"]["runbook"] = "docs/runbooks.md#pool-full"
    cases.append(("a runbook annotation to a missing heading", lambda: rule_problems(moved, texts[RUNBOOKS])))
    label = copy.deepcopy(rule)
    label["spec"]["groups"][0]["rules"][0]["annotations"]["summary"] = "{{ $labels.pvc }}"
    cases.append(("an annotation label the series lacks", lambda: rule_problems(label, texts[RUNBOOKS])))
    for what, run in cases:
        if not run():
            failures.append(f"self-test: not reported: {what}")
    print(f"  self-test: {len(cases)} breakages of the docs and alerts: {len(failures)} not caught")
    tally.record("docs self-test", failures)
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
