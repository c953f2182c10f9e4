"""A rubric file: every table's keys are checked, a typo names the key meant."""

import pytest

from evalkit.errors import EvalkitError
from evalkit.rating.rubric import load_rubric

DIMENSION = '[[dimensions]]\nname = "x"\nquestion = "q"\n{extra}[dimensions.anchors]\n' + "".join(
    f'{n} = "a{n}"\n' for n in range(1, 6)
)


@pytest.mark.parametrize(
    ("top", "extra", "message", "hint"),
    [
        ('verison = "1"\n', "", "unknown key 'verison'", "did you mean: version?"),
        ('version = "1"\n[instructions]\npari = "pick one"\n', "",
         "instructions: unknown item kind 'pari'", "did you mean: pair?"),
        ('version = "1"\n', 'questoin = "q2"\n', "dimension 1: unknown key 'questoin'",
         "did you mean: question?"),
    ],
)  # fmt: skip
def test_a_typo_in_a_rubric_names_the_key_meant(tmp_path, top, extra, message, hint):
    path = tmp_path / "rubric.toml"
    path.write_text(top + DIMENSION.format(extra=extra))
    with pytest.raises(EvalkitError, match=message) as info:
        load_rubric(path)
    assert str(path) in str(info.value) and info.value.hint == hint


def test_a_rubric_without_typos_loads(tmp_path):
    path = tmp_path / "rubric.toml"
    path.write_text(
        'version = "1"\n[instructions]\npair = "pick one"\n' + DIMENSION.format(extra="")
    )
    assert load_rubric(path).instructions == {"pair": "pick one"}
