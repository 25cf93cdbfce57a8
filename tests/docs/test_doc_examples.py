"""Every ```python block of the documentation runs.

Collects the fenced ``python`` blocks of every ``docs/**/*.md`` page and of ``README.md``. The blocks
of one page run in order in one namespace (later blocks use what earlier ones defined), in a
temporary working directory, within a time budget per page. A failure names the page and the line
of the block's opening fence. Pages are discovered, not listed, so pages added later are tested too.
Blocks that must not run are fenced as ``console``, ``yaml``, ``text`` (or any other language).
"""

from __future__ import annotations

import re
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE_BUDGET_S = 120.0
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@dataclass
class CodeBlock:
    line: int  # 1-based line of the opening fence
    source: str


def python_blocks(text: str) -> list[CodeBlock]:
    """The ```python / ```py blocks of a Markdown text, with the line of each opening fence.

    Fences follow CommonMark: a block ends at a fence of the same character at least as long; other
    fenced blocks (including MyST directives such as ```{code-block}) are skipped whole.
    """
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = match["info"].strip().split(" ")[0].lower() if match["info"].strip() else ""
        start, body = i, []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                if not closing["info"].strip():
                    break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        if language in ("python", "py", "python3"):
            blocks.append(CodeBlock(start + 1, "\n".join(body) + "\n"))
    return blocks


def documentation_pages() -> list[Path]:
    pages = sorted((ROOT / "docs").rglob("*.md"))
    pages = [p for p in pages if "_build" not in p.relative_to(ROOT).parts]
    readme = ROOT / "README.md"
    return ([readme] if readme.exists() else []) + pages


def _pages_with_code() -> list[Path]:
    return [page for page in documentation_pages() if python_blocks(page.read_text(encoding="utf-8"))]


class PageTimeout(BaseException):
    """Raised by the alarm; a BaseException so that an ``except Exception`` in a block cannot swallow it."""


def _run_page(page: Path, budget_s: float, root: Path = ROOT) -> None:
    """Run the page's python blocks in order in one namespace; fail naming page and block line."""
    relative = page.relative_to(root)
    namespace: dict = {"__name__": "__main__"}
    started = time.monotonic()
    use_alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()

    def on_alarm(signum, frame):
        raise PageTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        for block in python_blocks(page.read_text(encoding="utf-8")):
            where = f"{relative}, python block at line {block.line}"
            code = compile(block.source, f"{relative}:{block.line}", "exec")
            try:
                exec(code, namespace)
            except PageTimeout:
                pytest.fail(f"{where}: the page ran past its budget of {budget_s:.0f} s", pytrace=False)
            except Exception:
                details = traceback.format_exc(limit=-6)
                pytest.fail(f"{where} failed:\n{details}", pytrace=False)
            if not use_alarm and time.monotonic() - started > budget_s:
                pytest.fail(f"{where}: the page ran past its budget of {budget_s:.0f} s", pytrace=False)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _run_page(page, PAGE_BUDGET_S)


def test_discovery_reads_every_python_block_with_its_line(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "# Title",  # 1
            "```python",  # 2
            "a = 1",  # 3
            "```",  # 4
            "````markdown",  # 5
            "```python",  # 6  inside another fence: not a block of its own
            "never = 1",  # 7
            "```",  # 8
            "````",  # 9
            "```{code-block} python",  # 10 a MyST directive: not executed
            "skipped = 1",  # 11
            "```",  # 12
            "```yaml",  # 13
            "k: v",  # 14
            "```",  # 15
            "  ```py",  # 16 indented fence (inside a list item)
            "  b = a + 1",  # 17
            "  ```",  # 18
        ]
    )
    blocks = python_blocks(text)
    assert [b.line for b in blocks] == [2, 16]
    assert [b.source for b in blocks] == ["a = 1\n", "b = a + 1\n"]


def test_a_failing_block_names_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "guide" / "page.md"
    page.parent.mkdir(parents=True)
    page.write_text("# x\n\n```python\nvalue = 1\n```\n\ntext\n\n```python\nassert value == 2\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"docs/guide/page\.md, python block at line 9 failed"):
        _run_page(page, PAGE_BUDGET_S, root=tmp_path)


def test_a_slow_page_is_stopped_at_its_budget(tmp_path: Path) -> None:
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("the budget is enforced with SIGALRM")
    page = tmp_path / "slow.md"
    page.write_text("```python\nimport time\ntime.sleep(30)\n```\n")
    started = time.monotonic()
    with pytest.raises(
        pytest.fail.Exception, match=r"slow\.md, python block at line 1: the page ran past its budget of 1 s"
    ):
        _run_page(page, 1.0, root=tmp_path)
    assert time.monotonic() - started < 10
