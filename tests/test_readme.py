"""The README's code runs as written."""
import os
import re

import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _python_block(heading: str) -> str:
    text = open(README, encoding="utf-8").read()
    assert heading in text, f"README has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, f"no python block under {heading!r}"
    return block.group(1)


def test_api_snippet_runs(tmp_path, monkeypatch):
    code = _python_block("## The API in a few lines")
    # Training length is the one thing changed (1 epoch keeps the test quick); the rest runs as
    # written, in a fresh folder (it writes a run folder).
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope = {}
        exec(compile(code, README, "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    # what the snippet's comments promise
    images = scope["images"]
    assert scope["sal"].shape == images.shape
    assert scope["cam"].shape[-2:] == (28, 28)
    x = images[:1]
    C = scope["C"]
    conv = torch.nn.functional.conv2d(x.double(), scope["model"][0].weight.double())
    assert torch.allclose((C.double() @ x.double().flatten()), conv.flatten(), atol=1e-6)
