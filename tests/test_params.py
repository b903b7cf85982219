import pytest

from labkit.core.params import ParamError, check, default


def test_none_takes_the_preset_and_a_given_value_is_checked_not_replaced():
    assert default("layers", None, "ci", ci=2, full=8) == 2
    assert default("layers", None, "full", ci=2, full=8) == 8
    assert default("layers", 5, "ci", ci=2, full=8, min=1) == 5
    with pytest.raises(ParamError, match="layers must be >= 1, got 0"):
        default("layers", 0, "ci", ci=2, full=8, min=1)  # 0 is an error, never quietly the preset's 2
    with pytest.raises(ParamError, match="must be int"):
        default("layers", "2", "ci", ci=2, full=8)
    with pytest.raises(ParamError, match="must be int"):
        default("layers", True, "ci", ci=2, full=8)
    with pytest.raises(ParamError, match="unknown preset"):
        default("layers", None, "fast", ci=2, full=8)


def test_check_names_the_valid_choices_and_ranges():
    assert check("rate", 2, float, min=0.1) == 2
    assert check("extras", ["bf16"], list, choices=("bf16",)) == ["bf16"]
    with pytest.raises(ParamError, match="extras must be list or tuple, got str 'bf16'"):
        check("extras", "bf16", (list, tuple), choices=("bf16",))  # a string is not a list of names
    with pytest.raises(ParamError, match=r"'fp8' is not valid; choose from \['bf16'\]"):
        check("extras", ["bf16", "fp8"], list, choices=("bf16",))
    with pytest.raises(ParamError, match=r"'int9' is not valid; choose from"):
        check("int8", "int9", str, choices=("int8-dynamic", "int8-weight-only"))
    with pytest.raises(ParamError, match="must be <= 1"):
        check("sparsity", 1.5, float, max=1)
