"""The README's first commands are what CI runs; check they stay runnable as written."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def block(marker: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"<!-- {marker} -->")
    fence = [i for i in range(start + 1, len(lines)) if lines[i].startswith("```")][:2]
    return "\n".join(lines[fence[0] + 1: fence[1]])


def test_readme_blocks_install_and_run():
    main, test = block("main-commands"), block("test-commands")
    assert "pip install ." in main and "bigcos " in main
    assert "pip install -e '.[test]'" in test and "pytest" in test.splitlines()[-1]
    assert "test-commands" in (ROOT / ".ci" / "run").read_text()
