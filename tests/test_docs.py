"""The repository documents itself: nothing a user reads points outside it, and every "§N.M"
the README and the package cite is a section of docs/methods.md (or, where the citation names
it, of docs/ARCHITECTURE.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
METHODS = REPO / "docs" / "methods.md"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"

# Paths into the development folder beside the repository, which users of the package do not have.
OUTSIDE = ("../shared/spec", "../shared/docs", "shared/spec/methods.md", "shared/docs/ARCHITECTURE.md")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", re.MULTILINE)


def _tracked() -> List[Path]:
    """Tracked files (``git ls-files``), or every file when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        if names:
            return [REPO / n for n in names if (REPO / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]


def user_facing() -> List[Path]:
    """README.md, docs/*.md, ueperf/**/*.py and bench/**/*.md except the dated reports in bench/results/."""
    out = []
    for p in _tracked():
        rel = p.relative_to(REPO).as_posix()
        if (rel == "README.md" or (rel.startswith("docs/") and rel.endswith(".md"))
                or (rel.startswith("ueperf/") and rel.endswith(".py"))
                or (rel.startswith("bench/") and rel.endswith(".md") and not rel.startswith("bench/results/"))):
            out.append(p)
    for p in (REPO / "README.md", METHODS, ARCHITECTURE):  # new docs count before they are committed
        if p.is_file() and p not in out:
            out.append(p)
    return out


def headings(path: Path) -> Set[str]:
    """Section numbers of a Markdown file: "## 4. ..." gives 4, "### 4.3 ..." gives 4.3."""
    return set(HEADING.findall(path.read_text(encoding="utf-8")))


def citations(text: str) -> Dict[str, Set[str]]:
    """The "§N.M" a text cites, split by the document they name: ARCHITECTURE when "ARCHITECTURE"
    stands just before the "§", docs/methods.md otherwise."""
    cited: Dict[str, Set[str]] = {"methods": set(), "architecture": set()}
    for m in SECTION.finditer(text):
        before = text[max(0, m.start() - 30):m.start()]
        cited["architecture" if "ARCHITECTURE" in before else "methods"].add(m.group(1))
    return cited


def test_docs_exist_and_say_what_the_section_numbers_mean():
    assert METHODS.is_file() and ARCHITECTURE.is_file()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/methods.md" in readme and "docs/ARCHITECTURE.md" in readme
    head = METHODS.read_text(encoding="utf-8")[:3000]
    assert "§" in head and "refer to the sections of this file" in head


@pytest.mark.parametrize("path", user_facing(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_nothing_a_user_reads_points_outside_the_repository(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [s for s in OUTSIDE if s in text]
    assert not found, (f"{path.relative_to(REPO)} refers to {found}, outside the repository: cite docs/methods.md "
                       f"or docs/ARCHITECTURE.md instead")


def test_every_section_the_readme_cites_exists():
    cited = citations((REPO / "README.md").read_text(encoding="utf-8"))
    missing = sorted(cited["methods"] - headings(METHODS), key=lambda s: [int(x) for x in s.split(".")])
    assert not missing, f"README.md cites § {missing}, which docs/methods.md has no heading for"
    missing = sorted(cited["architecture"] - headings(ARCHITECTURE))
    assert not missing, f"README.md cites docs/ARCHITECTURE.md § {missing}, which it has no heading for"


def test_every_section_the_package_cites_exists():
    sections, arch = headings(METHODS), headings(ARCHITECTURE)
    bad = []
    for path in sorted((REPO / "ueperf").rglob("*.py")):
        cited = citations(path.read_text(encoding="utf-8"))
        bad += [f"{path.relative_to(REPO)}: §{s}" for s in sorted(cited["methods"] - sections)]
        bad += [f"{path.relative_to(REPO)}: ARCHITECTURE §{s}" for s in sorted(cited["architecture"] - arch)]
    assert not bad, "sections cited but missing from docs/methods.md (or docs/ARCHITECTURE.md): " + ", ".join(bad)
