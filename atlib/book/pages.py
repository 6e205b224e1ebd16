"""What the book runner adds around the executed chapters: provenance, a static view of widgets, the
hand-written and generated pages, and the per-profile summaries the claims ledger reads.

- Every executed chapter gets a **provenance** box under its title (profile, dataset, model, device, seeds,
  training precision, git commit, wall time), written after papermill finishes, when the wall time is known.
- Code cells are folded behind a "show code" toggle and the papermill parameter cells removed: the book
  is read for its prose, tables and figures; the code is one click away and in ``chapters/``.
- A widget has no kernel in static HTML: its output becomes a note saying where it is live, and the
  notebook's widget state is dropped (it would make every page fetch widget JavaScript from a CDN).
- Hand-written pages live in ``pages/`` and are copied into every output folder; ``claims.md`` is
  generated from ``results/<profile>/summary.json`` (committed) and the summary of the current build.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from atlib.book import claims
from atlib.core.runtime import precision_text

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "pages"  # hand-written pages (intro, references), copied into every output folder
RESULTS = REPO / "results"  # results/<profile>/summary.json: the committed summary of each profile
GENERATED = {"claims": "claims.md", "knobs": "knobs.md"}  # toc entries the runner writes itself (the ledger, knobs)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
FOLD_EXEMPT = {"hide-input", "hide-cell", "remove-input", "remove-cell", "hide-output"}


@dataclass(frozen=True)
class Provenance:
    """Where and how one chapter was executed."""

    profile: str
    description: str
    dataset: str
    model: str
    device: str
    seeds: tuple[int, ...]
    git_commit: str
    executed_at: str  # UTC, minutes
    wall_s: float
    precision: str  # what trained the models on this device: "fp32" or "bf16" (atlib.core.runtime.train_precision)
    precision_requested: str  # what the profile asked for (Profile.precision)
    settings_toml: str = ""  # the profile's resolved settings (atlib.studies.profiles.profile_toml), folded
    compute: dict[str, Any] | None = None  # what its artifacts cost when computed (atlib.core.store.costs)

    def cost_text(self) -> str:
        """The build's own wall time, and what computing the chapter's results cost (cold, as recorded)."""
        built = f"**this build** {self.wall_s:.0f} s"
        c = self.compute
        if not c or not c.get("artifacts"):
            return built
        gap = f"; {c['unrecorded']} without a record" if c.get("unrecorded") else ""
        return (f"{built} · **computing its results** {c['seconds'] / 60:.1f} min of single-thread jobs "
                f"({c['artifacts']} cached artifacts, their own recorded times{gap})")

    def markdown(self) -> str:
        commit = self.git_commit.removesuffix("-dirty")
        dirty = " (with uncommitted changes)" if self.git_commit.endswith("-dirty") else ""
        # Nested fences: the outer box's backticks outlast any inside it, and the settings box is fenced with
        # tildes because its title holds a backtick code span (CommonMark allows no backtick in the info string
        # of a backtick fence: with one, the box was not parsed and its source showed on every chapter).
        fence = "````" if self.settings_toml else "```"
        settings = ["", "~~~~{admonition} Every setting of this profile (TOML: `python -m atlib book --profile FILE`)",
                    ":class: dropdown", "", "~~~toml", self.settings_toml.rstrip(), "~~~", "~~~~"]
        return "\n".join([
            f"{fence}{{admonition}} Provenance", ":class: note atbook-provenance", "",
            f"Executed for profile **`{self.profile}`** ({self.description}).  ",
            f"**Dataset** {self.dataset} · **model** {self.model} · **seeds** {', '.join(map(str, self.seeds))} · "
            f"**device** {self.device}  ",
            f"**training precision** {precision_text(self.precision_requested, self.precision, self.device)}  ",
            f"**git commit** `{commit[:12]}`{dirty} · **executed** {self.executed_at} UTC · " + self.cost_text()]
            + (settings if self.settings_toml else []) + [fence])

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "dataset": self.dataset, "model": self.model, "device": self.device,
                "seeds": list(self.seeds), "precision": self.precision, "precision_requested": self.precision_requested,
                "git_commit": self.git_commit, "executed_at": self.executed_at, "wall_s": round(self.wall_s, 1),
                "compute": self.compute}


def add_provenance(nb: nbformat.NotebookNode, prov: Provenance) -> None:
    """Insert the provenance box right under the chapter's ``# title`` (or at the top if it has none)."""
    box = prov.markdown()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.splitlines()
            if lines and lines[0].startswith("# "):
                cell.source = "\n".join([lines[0], "", box, ""] + lines[1:])
                return
            break
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(box))


def static_widgets(nb: nbformat.NotebookNode, source: str) -> int:
    """Replace every widget output by a note saying where it is live; drop the widget state. Returns the count."""
    note = (f"*Interactive widget: live in JupyterLab only (`jupyter lab`, then open `{source}` as a notebook); the "
            f"book shows its static view above.*")
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if WIDGET_MIME in out.get("data", {}):
                out["data"] = {"text/markdown": note}
                out.pop("metadata", None)
                n += 1
    nb.metadata.pop("widgets", None)
    return n


def fold_code(nb: nbformat.NotebookNode) -> None:
    """Fold every code cell's source behind a toggle; remove the papermill parameter cells."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags):
            tags.append("remove-cell")
        elif not FOLD_EXEMPT & set(tags):
            tags.append("hide-input")


def finish_chapter(path: Path, prov: Provenance, source: str) -> None:
    """Post-process one executed notebook in place for the rendered book."""
    nb = nbformat.read(path, as_version=4)
    add_provenance(nb, prov)
    static_widgets(nb, source)
    fold_code(nb)
    nb.metadata["atbook"] = {"provenance": prov.as_dict()}
    nbformat.write(nb, path)


def copy_pages(out: Path, pages: Path = PAGES) -> list[str]:
    """Copy the hand-written pages into ``out``; returns their names."""
    names = []
    for f in sorted(pages.glob("*.md")):
        shutil.copy2(f, out / f.name)
        names.append(f.name)
    return names


# ----------------------------------------------------------------------------------- summaries and ledger
def committed_summaries(results: Path = RESULTS) -> dict[str, tuple[dict[str, Any], str]]:
    """``{profile: (summary, path shown)}`` for every ``results/<profile>/summary.json``."""
    out = {}
    for f in sorted(results.glob("*/summary.json")):
        shown = f.relative_to(REPO) if f.is_relative_to(REPO) else f
        out[f.parent.name] = (json.loads(f.read_text()), f"`{shown}`")
    return out


def record_summary(summary: Path, profile: str, results: Path = RESULTS) -> Path:
    """Copy a finished build's summary to ``results/<profile>/summary.json`` (to be committed)."""
    dest = results / profile / "summary.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(summary, dest)
    return dest


def write_ledger(out: Path, current: Mapping[str, Any] | None = None, order: tuple[str, ...] = (),
                 results: Path = RESULTS) -> Path:
    """Write ``out/claims.md`` from the committed summaries, the current build's (if any) replacing its profile's."""
    found = committed_summaries(results)
    if current is not None:
        found[current["profile"]] = (dict(current), "this build")
    ranked = sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))
    page = claims.ledger_markdown({p: found[p][0] for p in ranked}, {p: found[p][1] for p in ranked})
    path = out / GENERATED["claims"]
    path.write_text(page)
    return path
