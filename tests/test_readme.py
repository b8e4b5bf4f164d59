"""The README's Python code runs, and every ``isnet.NAME`` it mentions exists.

The fenced ``python`` blocks are executed in order in one namespace, as a reader would run them, in a
fresh folder that holds a small dataset ``my_dataset`` (manifest format).  Sizes that would take minutes on a CPU are shrunk by the listed replacements; a
replacement that no longer matches its block fails the test, so README edits keep this list honest.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.data.test_datamodule import make_folder

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.S | re.M)

#: (a snippet identifying the block, [(README text, what runs instead)]).
SHRINK = [
    ("ISNetModule(\"densenet121\"", [
        ("size=224", "size=16"),
        ("ISNetModule(\"densenet121\"", "ISNetModule(\"small_cnn\""),
        ("max_epochs=48", "max_epochs=1, progress=False"),
    ]),
    ("resume=True", [("max_epochs=48", "max_epochs=1, progress=False")]),
    ("torchvision.models.densenet121(num_classes=3)", [
        ("torch.rand(4, 3, 224, 224)", "torch.rand(4, 3, 32, 32)"),
    ]),
]

DATASET = [(f"{split}{i}", True, label, split) for split in ("train", "val", "test") for i, label in
           enumerate(["cat", "dog", "cat", "dog"])]


def _shrunk(block: str) -> str:
    for key, replacements in SHRINK:
        if key in block:
            for old, new in replacements:
                assert old in block, f"README block with {key!r} no longer contains {old!r}: update SHRINK"
                block = block.replace(old, new)
    return block


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2
    for key, _ in SHRINK:
        assert any(key in block for block in BLOCKS), f"no README block contains {key!r}: update SHRINK"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    make_folder(tmp_path / "my_dataset", DATASET, size=(20, 20))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for index, block in enumerate(BLOCKS):
        code = _shrunk(block)
        try:
            exec(compile(code, f"README.md python block {index}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - name the block that failed
            pytest.fail(f"README python block {index} ({block.splitlines()[0]!r}) failed: {error!r}")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


FILE_SUFFIXES = {"json", "py", "pt", "pt2", "onnx", "csv", "md", "html", "yaml", "png", "npz", "ckpt"}
NAMES = sorted({name for name in re.findall(r"\bisnet(?:\.[A-Za-z_]\w*)+", TEXT)
                if name.rsplit(".", 1)[1] not in FILE_SUFFIXES})  # file names such as isnet.json are no names


@pytest.mark.parametrize("dotted", NAMES)
def test_every_name_the_readme_mentions_exists(dotted):
    try:
        _resolve(dotted)
    except (AttributeError, ModuleNotFoundError) as error:
        pytest.fail(f"README names {dotted}, which does not resolve: {error}")


def test_the_systems_table_lists_the_methods_of_the_registry():
    from isnet.systems.registry import METHODS

    table = TEXT.split("## The systems", 1)[1].split("\n\n")[2]
    assert table.startswith("| method |")
    assert re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE) == list(METHODS)
