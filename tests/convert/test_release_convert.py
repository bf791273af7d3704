"""`wan22 convert` on a whole release folder: every component lands in our format and loads back identically."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refcases import REFERENCE_DIR
from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.release import convert_release
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.pipeline import Wan22Pipeline


@pytest.mark.parametrize("case", ["pipe_ti2v", "pipe_t2v_moe"])
def test_release_folder_converts_every_component(case, tmp_path):
    src = REFERENCE_DIR / case / "checkpoint"
    assert src.is_dir(), f"reference checkpoint {src} missing (set WAN22_REFERENCE_DIR)"
    written = convert_release(src, tmp_path / "ours")
    assert {"vae", "t5"} <= set(written)
    for a, b in [(load_vae(src), load_vae(tmp_path / "ours")),
                 (load_t5(src, dtype=jnp.float32, param_dtype=jnp.float32),
                  load_t5(tmp_path / "ours", dtype=jnp.float32, param_dtype=jnp.float32))]:
        for x, y in zip(jax_leaves(a), jax_leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    experts = [e for e in written if e.endswith("noise_model")] or ["."]
    for e in experts:
        for x, y in zip(jax_leaves(load_dit(src / e)), jax_leaves(load_dit(tmp_path / "ours" / e)), strict=True):
            np.testing.assert_array_equal(x, y)
    pipe = Wan22Pipeline.from_pretrained(tmp_path / "ours", dtype=jnp.float32)
    assert pipe.task.two_experts == (case == "pipe_t2v_moe") and pipe.text_encoder is None  # no tokenizer files


def jax_leaves(model):
    import jax
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model))]
