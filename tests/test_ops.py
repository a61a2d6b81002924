"""The fast operations of alexnet_jax.ops against the plain XLA operations they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import ops


def _conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(
    "size,kernel_size,stride,channels",
    [
        # conv1 at Caffe's 227: 55x55, every pixel read
        pytest.param(227, 11, 4, 3, marks=pytest.mark.slow),
        # conv1 at 224 + 3 zero pixels (architecture.conv1_padding) is the same
        pytest.param(227, 11, 4, 2, marks=pytest.mark.slow),
        (35, 11, 4, 3),  # 7x7 output; the input is not a whole number of blocks
        (20, 5, 3, 4),  # kernel not a multiple of the stride, trailing pixels unread
        (9, 3, 1, 2),  # stride 1
    ],
)
def test_strided_conv_matches_xla_convolution(size, kernel_size, stride, channels):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, channels, 6)), jnp.float32)
    want = _conv(x, kernel, stride)
    got = ops.strided_conv(x, kernel, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))

    # Gradients with respect to both arguments: the kernel's is the one training uses.
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    _, vjp_want = jax.vjp(lambda a, b: _conv(a, b, stride), x, kernel)
    _, vjp_got = jax.vjp(lambda a, b: ops.strided_conv(a, b, stride), x, kernel)
    for w, o in zip(vjp_want(g), vjp_got(g)):
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_strided_conv_refuses_mismatched_kernel():
    x = jnp.zeros((1, 20, 20, 3))
    with pytest.raises(ValueError, match="3 channels"):
        ops.strided_conv(x, jnp.zeros((5, 5, 4, 2)), 2)
    with pytest.raises(ValueError, match="smaller than"):
        ops.strided_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((5, 5, 3, 2)), 2)


def _pool_plain(x, window, stride):
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID"
    )


@pytest.mark.parametrize("window", [3, 2])
@pytest.mark.parametrize("size", [13, 14])
def test_max_pool_values_and_gradient_match_xla(window, size):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
    want, vjp_want = jax.vjp(lambda a: _pool_plain(a, window, 2), x)
    got, vjp_got = jax.vjp(lambda a: ops.max_pool(a, window, 2), x)
    np.testing.assert_array_equal(got, want)
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_allclose(vjp_got(g)[0], vjp_want(g)[0], rtol=1e-6, atol=1e-6)


def test_max_pool_ties_go_to_one_element_like_xla():
    # Constant windows: every element ties. XLA's select-and-scatter picks one element per
    # window; so must we, and the same one (the gradient would otherwise be multiplied).
    x = jnp.ones((1, 7, 7, 2), jnp.float32)
    x = x.at[0, 3, 3, 1].set(2.0)  # one real maximum among the ties
    g = jnp.arange(1.0, 1.0 + 3 * 3 * 2).reshape(1, 3, 3, 2)
    want = jax.vjp(lambda a: _pool_plain(a, 3, 2), x)[1](g)[0]
    got = jax.vjp(lambda a: ops.max_pool(a, 3, 2), x)[1](g)[0]
    np.testing.assert_array_equal(got, want)
    # Each window passes its gradient on exactly once.
    np.testing.assert_allclose(jnp.sum(got), jnp.sum(g))


def test_max_pool_after_relu_zero_ties():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(2, 27, 27, 4)) - 1.0, jnp.float32)  # mostly zeros after ReLU
    g = jnp.asarray(rng.normal(size=(2, 13, 13, 4)), jnp.float32)

    def loss(pool):
        return lambda a: jnp.sum(pool(jax.nn.relu(a)) * g)

    want = jax.grad(loss(lambda a: _pool_plain(a, 3, 2)))(z)
    got = jax.grad(loss(lambda a: ops.max_pool(a, 3, 2)))(z)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size,padding", [(3, 1), (5, 2), (3, 0)])
def test_conv2d_values_and_gradients_match_xla(size, padding):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(size, size, 4, 6)), jnp.float32)

    def plain(a, b):
        return jax.lax.conv_general_dilated(
            a, b, (1, 1), [(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    want, vjp_want = jax.vjp(plain, x, kernel)
    got, vjp_got = jax.vjp(lambda a, b: ops.conv2d(a, b, padding), x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    for w, o in zip(vjp_want(g), vjp_got(g)):
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-4)
