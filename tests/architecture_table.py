"""The family table of docs/models.md, written from what tests/test_architectures.py passed for each family.

Each family's test records, stage by stage, what ran and passed or what was refused or skipped and why
(reports/architectures/<family>.json); `make architectures` turns the records of a test run into the table, and the
test itself fails when the committed table no longer says what its run did.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "models.md"
RECORDS = Path(os.environ.get("SPARSETRT_ARCHITECTURE_RECORDS", ROOT / "reports" / "architectures"))
BEGIN = "<!-- family table: `make architectures` writes it from the test run's records -->"
END = "<!-- end of the family table -->"
# (key, column heading), in the order the test runs the stages
STAGES = [("prune", "prune 2:4 --permute all: SparseGPT, Wanda --stream"), ("shrink", "shrink"), ("distill", "distill"),
          ("export", "export, KV cache"), ("parity", "parity vs PyTorch"), ("ort_target", "ONNX Runtime target"),
          ("quantize", "INT8 / INT4 Q/DQ, lint"), ("trtllm", "TensorRT-LLM checkpoint"),
          ("unified", "Model Optimizer unified checkpoint"), ("engine", "TensorRT-RTX engine"),
          ("generate", "generate"), ("serve", "batching server")]


class Record:
    """One family's run: for each stage, what passed (a short text) or why it was refused or skipped."""

    def __init__(self, family: str, name: str):
        self.family, self.name = family, name
        self.stages: dict[str, dict] = {}

    def ok(self, stage: str, text: str = "yes") -> None:
        self.stages[stage] = {"passed": True, "text": text}

    def refuse(self, stage: str, reason: str) -> None:
        """`reason` as the code says it, the family's own name made generic so families refused alike share a note."""
        self.stages[stage] = {"passed": False, "text": reason.replace(f"'{self.family}'", "this family")}

    def write(self) -> None:
        missing = [key for key, _ in STAGES if key not in self.stages]
        assert not missing, f"{self.family}: no result for {missing}"
        RECORDS.mkdir(parents=True, exist_ok=True)
        (RECORDS / f"{self.family}.json").write_text(json.dumps(
            {"family": self.family, "name": self.name, "stages": self.stages}, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Record:
        data = json.loads(path.read_text())
        record = cls(data["family"], data["name"])
        record.stages = data["stages"]
        return record


def table(records: list[Record]) -> str:
    """The table, a refusal's reason as a numbered note under it (one note per distinct reason)."""
    reasons: list[str] = []
    rows = ["| family | " + " | ".join(heading for _, heading in STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    for record in records:
        cells = [record.name]
        for key, _ in STAGES:
            result = record.stages[key]
            if result["passed"]:
                cells.append(result["text"])
            else:
                if result["text"] not in reasons:
                    reasons.append(result["text"])
                cells.append(f"no [{reasons.index(result['text']) + 1}]")
        rows.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(rows + [""] + [f"[{i}] {reason}  " for i, reason in enumerate(reasons, 1)])


def committed(page: Path = PAGE) -> dict[str, dict[str, dict]]:
    """{family name: {stage: {"passed", "text"}}} as the page's table says, notes resolved."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise AssertionError(f"{page}: no family table between its markers")
    lines = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip().splitlines()
    notes = {line.split("] ", 1)[0] + "]": line.split("] ", 1)[1].rstrip() for line in lines if line.startswith("[")}
    families = {}
    for line in lines[2:]:
        if not line.startswith("| "):
            continue
        name, *cells = line.strip("| ").split(" | ")
        families[name] = {key: {"passed": not cell.startswith("no ["), "text": notes.get(cell[3:], cell)}
                          for (key, _), cell in zip(STAGES, cells)}
    return families


def main(families: list[str]) -> int:
    """Write the table from the records of the last test run; refuse when a family has none (its test failed or
    did not run), so the page never mixes runs."""
    missing = [f for f in families if not (RECORDS / f"{f}.json").is_file()]
    if missing:
        print(f"no test record for {', '.join(missing)} in {RECORDS}: run `pytest tests/test_architectures.py` "
              "first (a failing family writes none)", file=sys.stderr)
        return 1
    records = [Record.read(RECORDS / f"{f}.json") for f in families]
    text = PAGE.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    PAGE.write_text(text[:start] + "\n" + table(records) + "\n" + text[end:])
    print(f"{PAGE.relative_to(ROOT)}: {len(records)} families from {RECORDS}")
    return 0


if __name__ == "__main__":
    from sparsetrt.architectures import FAMILIES

    sys.exit(main(list(FAMILIES)))
