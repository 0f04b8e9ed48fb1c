"""--list: every registered name has a real one-line description; every config key has a type,
a default, a meaning and (for numbers) a unit, read from the dataclass field's comment."""
from __future__ import annotations

import dataclasses
import re
from typing import Tuple

import pytest

from ueperf.listing import KINDS, UNITS, config_keys, field_comments, format_keys, registered, run_config_keys


def _real_meaning(text: str) -> bool:
    """At least two words left after dropping source tags ([code], [spec §3.0]) and bare choice
    lists (auto | cpu | cuda): "auto | nccl | gloo" alone is not a meaning."""
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\S+(\s*\|\s*\S+)+", "", text)
    return len(re.findall(r"[A-Za-z]{2,}", text)) >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_entry_has_a_real_description(kind):
    items = registered(kind)
    assert items, kind
    for name, text in items:
        assert isinstance(text, str) and "\n" not in text, (kind, name, text)
        assert "module docstring" not in text, (kind, name, text)  # a pointer is not a description
        assert text.strip() != name and len(text.split()) >= 4, (kind, name, text)


def test_every_config_key_has_type_default_meaning_and_unit():
    keys = run_config_keys()
    from ueperf.config import RunConfig, all_keys
    assert [k.key for k in keys] == all_keys(RunConfig())  # the listing covers every settable key, in order
    missing = [k.key for k in keys if not _real_meaning(k.meaning)]
    assert not missing, f"config fields without a meaning (add a trailing comment in ueperf/config.py): {missing}"
    numeric = [k.key for k in keys if k.type.split("×")[0].split(" ")[0] in ("int", "float")]
    assert not [k for k in numeric if k not in UNITS], "numeric keys without an entry in ueperf.listing.UNITS"
    assert not set(UNITS) - {k.key for k in keys}, "UNITS names keys that do not exist"


def test_comment_parsing_types_and_defaults():
    @dataclasses.dataclass
    class C:
        a: float = 8 / 255        # budget, [0,1] pixel units
        b: Tuple[float, ...] = (0.5, 0.75)  # first line
                                            # second line
        c: bool = True
        d: str = ""               # a name
        # a comment about e, not a continuation of d
        e: Tuple[int, int] = (1, 2)
    assert field_comments(C) == {"a": "budget, [0,1] pixel units", "b": "first line second line", "d": "a name"}
    rows = {k.key: k for k in config_keys(C(), units={"a": "[0,1] pixel"})}
    assert rows["a"][1:] == ("float", "8/255", "[0,1] pixel", "budget, [0,1] pixel units")
    assert rows["b"][1:3] == ("float list", "0.5,0.75")
    assert rows["c"][1:3] == ("bool", "true") and rows["c"].meaning == ""
    assert rows["d"][2] == '""' and rows["e"][1:3] == ("int×2", "1,2")


def test_list_keys_cli_prints_one_line_per_key(capsys):
    from ueperf.train import main
    assert main(["--list", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "TYPE", "DEFAULT", "UNIT", "MEANING"]
    assert len(lines) == 1 + len(run_config_keys())
    lr = next(l for l in lines if l.startswith("optim.lr "))
    assert lr.split()[:4] == ["optim.lr", "float", "0.1", "lr"] and "base learning rate" in lr
    assert format_keys(run_config_keys()) == "\n".join(lines)


def test_protect_list_has_no_pointer_descriptions(capsys):
    from ueperf.protect import main
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "module docstring" not in out and len(out.splitlines()) == len(registered("protections"))


@pytest.mark.parametrize("method", [n for n, _ in registered("protections")])
def test_every_protection_config_key_has_a_meaning(method):
    from ueperf.listing import method_config_keys
    keys = method_config_keys(method)
    assert keys, method
    missing = [k.key for k in keys if not _real_meaning(k.meaning)]
    assert not missing, f"{method}: config fields without a meaning (add a trailing comment): {missing}"


def test_protect_list_keys(capsys):
    from ueperf.errors import ConfigError
    from ueperf.protect import main
    assert main(["--list", "keys", "--method", "random", "--set", "eps=16/255"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "TYPE", "DEFAULT", "UNIT", "MEANING"]
    assert [l.split()[0] for l in lines[1:]] == ["eps", "norm", "granularity", "batch_size"]
    assert lines[1].split()[:3] == ["eps", "float", "16/255"]  # --set applies to what is listed
    with pytest.raises(ConfigError, match=r"^--list keys lists one method's config keys: add --method NAME"):
        main(["--list", "keys"])
