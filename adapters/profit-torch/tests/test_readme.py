"""The repository README's PyTorch example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    section = text[text.index("## PyTorch"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    opt = scope["opt"]
    assert opt.calls == 20 and opt.last_report.phase == "main"
    assert opt.param_groups[0]["lr"] == 1e-3 * 0.5 ** 2, "the scheduler moved lr"
