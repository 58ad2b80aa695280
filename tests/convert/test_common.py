"""Weight readers: a damaged file is one clear InputError line, whatever part of it is broken."""

import zipfile

import numpy as np
import pytest

from jaxvlm.convert.common import read_weights
from jaxvlm.errors import InputError


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f8', 'fortran_order': False, 'shape': ((3,), }",  # unclosed bracket: tokenize.TokenError
        "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)) }",  # unbalanced: SyntaxError
    ],
)
def test_a_damaged_npz_header_is_one_line(tmp_path, header):
    body = np.zeros(3).tobytes()
    padded = header.ljust(118) + "\n"
    member = b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded.encode("latin1") + body
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", member)
    with pytest.raises(InputError, match=r"not a valid \.npz file") as e:
        read_weights(path)
    assert "\n" not in str(e.value)
