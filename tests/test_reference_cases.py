"""Every case under the reference folder, through the same code path as `wan22 verify`, at its own tolerance."""

import pytest

from refcases import reference_cases
from wan22_jax.errors import UnsupportedComponentError
from wan22_jax.verify import run_case

CASES = reference_cases()


@pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])
def test_reference_case(case_dir):
    try:
        res = run_case(case_dir)
    except UnsupportedComponentError as e:
        pytest.skip(str(e))
    lines = [f"{o.name}: err {o.error:.3e} tol {o.tolerance:.3e} {'ok' if o.passed else 'FAIL'} {o.detail}"
             for o in res.outputs]
    assert res.passed, "\n".join(lines)


def test_reference_cases_found():
    assert CASES, "no reference cases found; set WAN22_REFERENCE_DIR"
